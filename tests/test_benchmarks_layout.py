"""benchmarks/ as small modules by concern: the speed scripts import nothing of the training stack."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
TRAINING_STACK = ('scipy', 'timm.optim', 'timm.scheduler', 'matplotlib', 'benchmarks.training', 'benchmarks.sweep')


@pytest.mark.parametrize('script', ['speed', 'speed_report', 'profile_speed', 'inductor_block', 'tail_reductions',
                                    'tail_affine', 'tail_speed'])
def test_speed_scripts_import_only_what_they_use(script):
    code = f'import sys, benchmarks.{script}; print(*[m for m in {TRAINING_STACK!r} if m in sys.modules])'
    out = subprocess.run([sys.executable, '-c', code], cwd=BENCHMARKS.parent, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == []


@pytest.mark.parametrize('module', sorted(p.name for p in BENCHMARKS.glob('*.py')))
def test_benchmark_modules_stay_small(module):
    assert len((BENCHMARKS / module).read_text().splitlines()) <= 500
