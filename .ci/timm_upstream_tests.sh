#!/usr/bin/env bash
# timm's own model tests on the SaE family: tests/test_models.py from the sdist of the installed timm
# version (PyPI), run with timm_sae loaded as a pytest plugin (-p timm_sae), so that the saeresnet* /
# saeresnext* models are registered before timm's test module builds its parametrization, and
# selected with -k. Exits non-zero when a test fails or none is selected.
#
# Environment:
#   PY                     python of the environment that has timm_sae installed (default: python3)
#   TIMM_SAE_UPSTREAM_K    pytest -k expression (default: every test of every SaE model but the two that
#                          download weights, see below)
#   TIMM_SAE_UPSTREAM_ARGS extra pytest arguments, e.g. "-x -v"
#   OMP_NUM_THREADS        intra-op threads (default 1, see below)
# and timm's own knobs, read by its test module: TORCH_DEVICE (default cpu), TIMEOUT (overrides its
# per-test limits of 120/240/360 s; they apply only when pytest-timeout is installed) and
# GITHUB_ACTIONS (set on GitHub's runners: timm then skips fx backward on models over 100M parameters).
#
# Bounds. timm's tests fix their input sizes themselves (forward at the default 224 px, backward,
# torchscript and fx at 128 px, features at 96 px: the TARGET_*/MAX_* constants at the top of
# test_models.py); no environment variable changes them. The whole family runs, all 22 models
# (saeresnextaa201d_32x8d and saeresnet269d are the slowest; exclude them with TIMM_SAE_UPSTREAM_K if a
# runner needs it), including test_prune_intermediate_layers_contract, which timm's own CI leaves out as
# slow (it has no marker) but which is short on this family. Intra-op threads default to one: most of these
# tests run many small ops, where a second thread gains little, and on a shared machine OpenMP's barrier
# waits for a descheduled partner thread. pytest-timeout is in the test extra, so timm's per-test limits
# apply. The run's time on CI's machine: docs/method.md.
#
# One edit to timm's file: FEAT_INTER_FILTERS lists, by registry module, the models whose
# forward_intermediates() and features_only getter timm tests; the SaE models come from
# timm_sae.sae_resnet (registry module 'sae_resnet') and have ResNet's forward_intermediates, so that
# module is added to the list. The script stops if the list is not there to edit.
set -euo pipefail

PY="${PY:-python3}"
if [[ "$PY" == */* ]]; then  # a path: make it absolute, the tests run from a temporary directory
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
fi
# test_model_load_pretrained and test_model_features_pretrained download every pretrained tag's weights from
# the Hub (timm/resnet50.a1_in1k, ... for the conversion tags), which an offline CI runner cannot reach; the same
# loads (in_chans=1, num_classes=5 and 0, features_only=True) run offline in tests/test_convert.py, from a
# Hub cache of stand-in weights laid out like timm's repositories.
K="${TIMM_SAE_UPSTREAM_K:-sae and not test_model_load_pretrained and not test_model_features_pretrained}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

version=$("$PY" -c 'import timm; print(timm.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "timm-upstream: timm $version sdist from PyPI"
"$PY" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "timm==$version"
# only tests/ and pyproject.toml (timm's pytest markers): the sdist's own timm/ source must not
# shadow the installed timm, which it would as the rootdir of tests/ (a package) on sys.path
tar -xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/tests" "timm-$version/pyproject.toml"
src="$work/timm-$version"

"$PY" - "$src/tests/test_models.py" <<'EOF'
import sys

import timm
import timm_sae  # noqa: F401  (registers the family)

path = sys.argv[1]
module = 'sae_resnet'
assert timm.list_models(module=module) == timm.list_models('sae*'), f'the SaE models are not all in {module}'
text = open(path, encoding='utf-8').read()
anchor = 'FEAT_INTER_FILTERS = [\n'
if text.count(anchor) != 1:
    sys.exit(f'timm-upstream: {path} has no "{anchor.strip()}" to add {module!r} to')
open(path, 'w', encoding='utf-8').write(text.replace(anchor, f'{anchor}    {module!r},\n'))
EOF

cd "$src"
start=$(date +%s)
# shellcheck disable=SC2086  # TIMM_SAE_UPSTREAM_ARGS is a list of arguments
"$PY" -m pytest tests/test_models.py -p timm_sae -p no:cacheprovider -k "$K" \
    -q -rfEs --durations=10 -W ignore::pytest.PytestUnknownMarkWarning ${TIMM_SAE_UPSTREAM_ARGS:-}
echo "timm-upstream: passed in $(( $(date +%s) - start )) s"
