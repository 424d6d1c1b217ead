"""The training tail's Triton kernels: their tests (interpreted_tail_triton.py) in a process with Triton's
interpreter on, and the switch's error where Triton is missing."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_tail import BLOCKS, _block
from timm_sae import set_triton_tail

INTERPRETED_TESTS = Path(__file__).with_name('interpreted_tail_triton.py')


def test_triton_kernels_under_the_interpreter():
    """interpreted_tail_triton.py, every test run and passed, on the CPU under TRITON_INTERPRET=1."""
    pytest.importorskip('triton')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider', str(INTERPRETED_TESTS)],
        cwd=INTERPRETED_TESTS.parent.parent, env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True,
        text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.fullmatch(r'=* ?\d+ passed in [\d.]+s( \([\d:]+\))? ?=*', summary), summary


def test_set_triton_tail_without_triton_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    block = _block(*BLOCKS['basic'], 'default')
    with pytest.raises(RuntimeError, match='pip install triton'):
        set_triton_tail(block, True)
    assert set_triton_tail(block, False) == 1 and not block.triton_tail
