"""The training tail's Triton kernels: their tests (interpreted_tail_triton.py) in a process with Triton's
interpreter on, the kernels compiled by Triton's own compiler for a GPU (no GPU needed), and the switch's error
where Triton is missing."""
import importlib.util
import inspect
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


# the kernels' pointers to per-(n, c) or per-channel tensors, which hold fp32 (fp64 for fp64 data)
SMALL_POINTERS = {'mean_ptr', 'var_ptr', 'a_ptr', 'b_ptr', 'mu_ptr', 'g_sum_ptr', 'centred_sum_ptr'}


@pytest.mark.parametrize('dtype', ['bf16', 'fp16', 'fp32', 'fp64'])
def test_triton_kernels_compile_for_a_gpu(dtype: str, tmp_path, monkeypatch):
    """Each kernel through Triton's whole compiler (TTIR to a cubin by ptxas) for an sm_90 GPU: what the
    interpreter runs leniently, the compiler must accept, for every data type the tail takes."""
    pytest.importorskip('triton')
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from timm_sae import tail_triton
    monkeypatch.setenv('TRITON_CACHE_DIR', str(tmp_path))
    small = '*fp64' if dtype == 'fp64' else '*fp32'
    kernels = {tail_triton._sample_moments_kernel: (4, 1024), tail_triton._gated_norm_act_kernel: (128, 32),
               tail_triton._gated_norm_act_backward_kernel: (4, 1024)}
    for kernel, (block_c, block_hw) in kernels.items():
        parameters = inspect.signature(kernel.fn).parameters
        signature = {name: (small if name in SMALL_POINTERS else f'*{dtype}') if name.endswith('_ptr') else 'i32'
                     for name in parameters}
        constants = {'BLOCK_C': block_c, 'BLOCK_HW': block_hw, 'ACC': tl.float64 if dtype == 'fp64' else tl.float32}
        signature.update(dict.fromkeys(constants, 'constexpr'))
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                  target=GPUTarget('cuda', 90, 32))
        assert compiled.asm['cubin'], kernel.fn.__name__


def test_set_triton_tail_without_triton_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    block = _block(*BLOCKS['basic'], 'default')
    with pytest.raises(RuntimeError, match='pip install triton'):
        set_triton_tail(block, True)
    assert set_triton_tail(block, False) == 1 and not block.triton_tail
