#!/usr/bin/env bash
# Exports, conversions and model cards of the working tree, byte for byte as those of a base commit: every kind
# that .ci/export_examples.py writes (state dict, train.py checkpoints, results card, plain and SE conversions of
# files and of a timm tag, `timm-sae card`), written by the base commit's timm_sae and by this tree's, then diff -r.
#
#   bash .ci/same_exports.sh BASE        (PY: the python of the environment, default .venv/bin/python)
set -euo pipefail
base=${1:?usage: .ci/same_exports.sh BASE_COMMIT}
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/code"
git archive "$base" | tar -x -C "$work/code"
"$PY" .ci/export_examples.py "$work/base" --code "$work/code" >/dev/null
"$PY" .ci/export_examples.py "$work/tree" >/dev/null
diff -r "$work/base" "$work/tree"
echo "same-exports: the exports, conversions and cards of this tree are byte-identical to those of $base"
