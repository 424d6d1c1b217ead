#!/usr/bin/env bash
# Wheel smoke test: build the sdist and the wheel, check them with twine, install the wheel (not
# editable) into a fresh venv and use it from a folder outside the source tree.
#
#   1. copy the files git would commit (tracked, and untracked but not ignored) to a temporary
#      folder, so that the build neither sees stray ignored files nor writes build/ or *.egg-info
#      into the working tree; `python -m build` there makes the sdist, then the wheel from the
#      unpacked sdist (so a file missing from the sdist breaks the wheel too)
#   2. `twine check --strict` on each; the contents: the wheel holds timm_sae/ (every module of the
#      source package) and its dist-info, nothing else; the sdist holds README.md, LICENSE,
#      pyproject.toml, the package and setuptools' metadata, nothing else (no tests/: see MANIFEST.in)
#   3. a fresh venv, `pip install <wheel>` (pip resolves the dependencies from the registry), `pip check`
#   4. from outside the repository, with `python -I`: timm_sae is imported from the venv and installed
#      from the wheel, not editable; saeresnet18 forward on a tiny input; timm.list_models('sae*')
#      has one model per @register_model in the source; `timm-sae --version`, `timm-sae --help` and
#      `timm-sae COMMAND --help` for every command that timm_sae.cli.build_parser() declares
#
# Prints each check, "wheel-smoke: N passed, M failed" and the wall time; exits non-zero on any failure.
#
# Environment:
#   PY        python that has build and twine (default: the repository's .venv, else python3);
#             `pip install -e '.[release]'` provides both (.ci/run installs it)
#   BASE_PY   python that makes the fresh venv (default: python3)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PY="$repo/.venv/bin/python"; else PY=python3; fi
fi
BASE_PY="${BASE_PY:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
unset PYTHONPATH

start=$SECONDS
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "wheel-smoke: ok    $1"; }
fail() { failed=$((failed + 1)); echo "wheel-smoke: FAIL  $1" >&2; }
die() { echo "wheel-smoke: error: $1" >&2; exit 1; }
# check NAME COMMAND...: run a check that later ones do not depend on; its output shows only on failure
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name"; printf '%s\n' "$out" >&2; fi
}

for tool in build twine; do
    "$PY" -m "$tool" --version >/dev/null 2>&1 \
        || die "$PY has no $tool: pip install -e '.[release]', or set PY"
done
git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || die "$repo is not a git checkout: the build copies the files git lists"

work=$(mktemp -d "${TMPDIR:-/tmp}/timm-sae-wheel-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/dist" "$work/outside"

# 1. build from the files git would commit
step=$SECONDS
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | tar -C "$repo" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$work/src" -xf -
"$PY" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log" >&2; die "python -m build failed (log above)"; }
sdist=$(find "$work/dist" -name '*.tar.gz')
wheel=$(find "$work/dist" -name '*.whl')
[[ $(wc -w <<<"$sdist") == 1 && $(wc -w <<<"$wheel") == 1 ]] || die "expected one sdist and one wheel, got: $(ls "$work/dist")"
pass "python -m build: $(basename "$sdist"), $(basename "$wheel") ($((SECONDS - step)) s)"

# 2. twine, contents
check "twine check --strict $(basename "$sdist")" "$PY" -m twine check --strict "$sdist"
check "twine check --strict $(basename "$wheel")" "$PY" -m twine check --strict "$wheel"
check "distribution contents (wheel: the package only; sdist: package, README, LICENSE, pyproject)" \
    "$BASE_PY" - "$sdist" "$wheel" "$work/src/timm_sae" <<'EOF'
import sys
import tarfile
import zipfile
from pathlib import Path

sdist, wheel, package = sys.argv[1:]
modules = {f'timm_sae/{p.name}' for p in Path(package).glob('*.py')}
errors = []

names = zipfile.ZipFile(wheel).namelist()
dist_info = '-'.join(Path(wheel).name.split('-')[:2]) + '.dist-info/'
stray = [n for n in names if not (n.startswith('timm_sae/') or n.startswith(dist_info))]
errors += [f'wheel: {n} is outside the package' for n in stray]
errors += [f'wheel: {m} is missing' for m in sorted(modules - set(names))]
if dist_info + 'licenses/LICENSE' not in names:
    errors.append(f'wheel: {dist_info}licenses/LICENSE is missing')

with tarfile.open(sdist) as tar:
    files = [m.name.split('/', 1)[1] for m in tar.getmembers() if m.isfile()]
allowed_top = {'PKG-INFO', 'README.md', 'LICENSE', 'pyproject.toml', 'setup.cfg', 'MANIFEST.in'}
stray = [f for f in files if f not in allowed_top and not f.startswith(('timm_sae/', 'timm_sae.egg-info/'))]
errors += [f'sdist: {f} is not part of the package source' for f in stray]
required = {'README.md', 'LICENSE', 'pyproject.toml'} | modules
errors += [f'sdist: {f} is missing' for f in sorted(required - set(files))]

print('\n'.join(errors) or f'wheel: {len(names)} files, sdist: {len(files)} files')
sys.exit(1 if errors else 0)
EOF

# 3. fresh venv, install the wheel
step=$SECONDS
"$BASE_PY" -m venv "$work/venv"
venv_py="$work/venv/bin/python"
"$venv_py" -m pip install --quiet "$wheel" >"$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; die "pip install $(basename "$wheel") into a fresh venv failed (log above)"; }
pass "pip install $(basename "$wheel") into a fresh venv ($((SECONDS - step)) s)"
check "pip check (the installed dependencies are consistent)" "$venv_py" -m pip check

# 4. use it from outside the repository
n_entrypoints=$(grep -c '^@register_model' "$work/src/timm_sae/sae_resnet.py" || true)
cat >"$work/outside/smoke.py" <<'EOF'
"""Smoke checks of the installed wheel: one line a check, then 'PASSED FAILED' on the last line."""
import argparse
import importlib.metadata
import json
import subprocess
import sys
import sysconfig
import traceback
from pathlib import Path

import timm
import torch

repo, n_entrypoints = Path(sys.argv[1]), int(sys.argv[2])
results = []


def check(name, fn, *args):
    """Run one check; fn raises on failure and may return a detail to print."""
    try:
        detail = fn(*args)
    except Exception:
        results.append(False)
        print(f'wheel-smoke: FAIL  {name}\n{traceback.format_exc()}', file=sys.stderr, flush=True)
    else:
        results.append(True)
        print(f'wheel-smoke: ok    {name}' + (f': {detail}' if detail else ''), flush=True)


def installed_from_wheel():
    import timm_sae
    where = Path(timm_sae.__file__).resolve()
    purelib = Path(sysconfig.get_paths()['purelib']).resolve()
    assert purelib in where.parents, f'timm_sae imported from {where}, not from {purelib}'
    assert repo not in where.parents, f'timm_sae imported from the source tree: {where}'
    dist = importlib.metadata.distribution('timm-sae')
    assert dist.version == timm_sae.__version__, (dist.version, timm_sae.__version__)
    direct_url = json.loads(dist.read_text('direct_url.json') or '{}')
    assert not direct_url.get('dir_info', {}).get('editable'), f'editable install: {direct_url}'
    assert direct_url.get('url', '').endswith('.whl'), f'not installed from a wheel: {direct_url}'
    return f'timm_sae {timm_sae.__version__}, timm {timm.__version__}, torch {torch.__version__}'


def forward():
    from timm_sae import SqueezeAggregatedExcitation
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model('saeresnet18', num_classes=10).eval()
    n_sae = sum(isinstance(m, SqueezeAggregatedExcitation) for m in model.modules())
    assert n_sae > 0, 'saeresnet18 has no SqueezeAggregatedExcitation layer'
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all(), out
    return f'logits {tuple(out.shape)}, {n_sae} SaE layers'


def family():
    import timm_sae  # noqa: F401  (registers the family)
    names = timm.list_models('sae*')
    assert len(names) == n_entrypoints > 0, f'{len(names)} models registered, {n_entrypoints} entrypoints in the source'
    return f'{len(names)} models'


def cli(*args):
    """stdout of the installed console script `timm-sae ARGS`, which must exit 0."""
    proc = subprocess.run([str(Path(sys.executable).parent / 'timm-sae'), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'timm-sae {" ".join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}'
    return proc.stdout


def version_and_help():
    import timm_sae
    assert cli('--version').strip() == f'timm-sae {timm_sae.__version__}'
    assert cli('--help').startswith('usage: timm-sae')


commands = []


def list_commands():
    """Collect into `commands` the commands that timm_sae.cli.build_parser() declares."""
    from timm_sae.cli import build_parser
    commands.extend(name for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
                    for name in action.choices)
    assert commands, 'timm_sae.cli.build_parser() declares no command'
    return ', '.join(commands)


def command_help(command):
    text = cli(command, '--help')
    assert text.startswith(f'usage: timm-sae {command}'), text[:300]


check('import timm_sae from the venv, installed from the wheel (not editable)', installed_from_wheel)
check("timm.create_model('saeresnet18') forward on 2x3x32x32", forward)
check("timm.list_models('sae*'): one model per @register_model in the source", family)
check('timm-sae --version, timm-sae --help', version_and_help)
check('commands of timm_sae.cli.build_parser()', list_commands)
for command in commands:
    check(f'timm-sae {command} --help', command_help, command)
print(sum(results), len(results) - sum(results))
EOF
step=$SECONDS
smoke_out="$work/smoke.out"
set +e
(cd "$work/outside" && env -u PYTHONPATH OMP_NUM_THREADS=1 "$venv_py" -I smoke.py "$repo" "$n_entrypoints") \
    | tee "$smoke_out" | grep -v '^[0-9]* [0-9]*$'
smoke_rc=${PIPESTATUS[0]}
set -e
read -r smoke_passed smoke_failed < <(tail -n 1 "$smoke_out" | grep -E '^[0-9]+ [0-9]+$' || echo "0 1")
if (( smoke_rc != 0 )); then fail "smoke.py exited $smoke_rc"; fi
passed=$((passed + smoke_passed))
failed=$((failed + smoke_failed))
echo "wheel-smoke: installed-wheel checks took $((SECONDS - step)) s"

step=$SECONDS
rm -rf "$work"  # the venv holds torch and its CUDA libraries: several GB
echo "wheel-smoke: removed the temporary folder in $((SECONDS - step)) s"
echo "wheel-smoke: $passed passed, $failed failed"
echo "wheel-smoke: wall time $((SECONDS - start)) s"
(( failed == 0 ))
