"""The training tail's Triton kernels (timm_sae.tail_triton), run on the CPU by Triton's interpreter: exact against
timm's tail in float64, as accurate as BatchNorm in fp32, on CUDA tensors only.

Triton reads TRITON_INTERPRET when it is imported, so these tests run in a process of their own that sets it
(test_tail_triton.py starts it); the file's name keeps pytest from collecting it anywhere else.
"""
import copy
import os
from typing import List

import pytest
import torch
from torch import nn

from conftest import assert_equal_records, train_steps
from test_tail import BLOCKS, _block, assert_statistics_as_accurate_as_batchnorm
from timm_sae import SqueezeAggregatedExcitation, set_fast_tail, set_triton_tail
from timm_sae._testing import relative_error
from timm_sae.tail import gate_of, gated_tail

pytestmark = [
    pytest.mark.usefixtures('single_thread'),
    pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1', reason='needs a process with TRITON_INTERPRET=1'),
]

KERNELS = ('sample_moments', 'gated_norm_act', 'gated_norm_act_backward')


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The names of the ``tail_triton`` kernels called, in order."""
    from timm_sae import tail_triton
    calls: List[str] = []
    for name in KERNELS:
        kernel = getattr(tail_triton, name)
        monkeypatch.setattr(tail_triton, name,
                            lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    return calls


CASES = [('basic-downsample', 'default'), ('bottleneck-downsample', 'default'),
         ('bottleneck-downsample', 'channels-last'), ('basic-downsample', 'channels-last'),
         ('bottleneck-downsample', 'drop-path'), ('basic-downsample', 'plain-gate'),
         ('grouped-avg-down', 'momentum-none'), ('anti-aliased-avg-down', 'gamma-zero')]


@pytest.mark.parametrize('kind, variant', CASES, ids=[f'{kind}-{variant}' for kind, variant in CASES])
def test_triton_block_training_equals_timm_tail(kind: str, variant: str, interpreted: List[str]):
    """float64, 3 training steps: outputs, gradients (input, shortcut path, every parameter) and running
    statistics equal timm's tail's, with every kernel called each step."""
    arch, path = BLOCKS[kind]
    block = _block(arch, path, variant)
    reference = copy.deepcopy(block)
    assert set_fast_tail(reference, False) == 1 and set_triton_tail(block, True) == 1
    x = torch.randn(3, block.conv1.in_channels, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if variant == 'channels-last':
        block, reference = (m.to(memory_format=torch.channels_last) for m in (block, reference))
        x = x.contiguous(memory_format=torch.channels_last)
    records = train_steps(block, x)
    assert sorted(interpreted) == sorted(KERNELS * 3)
    assert_equal_records(records, train_steps(reference, x))


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'channels-last'])
def test_triton_statistics_as_accurate_as_batchnorm_float32(memory_format, interpreted: List[str]):
    """fp32 running statistics and output as close to the float64 truth as BatchNorm's own, at 250x mean/spread."""
    assert_statistics_as_accurate_as_batchnorm(memory_format, triton=True)
    assert interpreted == ['sample_moments', 'gated_norm_act']


def test_triton_bf16_within_bf16_rounding(interpreted: List[str]):
    """bf16 z and shortcut: output and gradients within two bf16 roundings of the PyTorch forms' (fp32 sums): Triton's
    interpreter casts fp32 to bf16 by truncation, where compiled kernels round to nearest as PyTorch does."""
    results = {}
    for triton in (True, False):
        torch.manual_seed(0)
        norm, sae = nn.BatchNorm2d(16), SqueezeAggregatedExcitation(16, rd_channels=8)
        z = torch.randn(3, 16, 6, 5).add_(2.).bfloat16().requires_grad_()
        shortcut = torch.randn(3, 16, 6, 5).bfloat16().requires_grad_()
        out = gated_tail(z, norm, gate_of(sae.bfloat16()), shortcut, triton=triton)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[triton] = [out, z.grad, shortcut.grad, norm.weight.grad, norm.bias.grad, norm.running_var]
    assert sorted(interpreted) == sorted(KERNELS)
    for triton_result, torch_result in zip(results[True], results[False], strict=True):
        assert triton_result.dtype == torch_result.dtype
        assert relative_error(triton_result.float(), torch_result.float()) <= 2 ** -6


def test_triton_tail_off_by_default_and_on_cuda_only(interpreted: List[str], monkeypatch):
    """Blocks start without the kernels; set on, they run on CUDA tensors (here: the interpreter's CPU tensors) and
    not while torch.compile traces."""
    block = _block(*BLOCKS['basic-downsample'], 'default')
    assert not block.triton_tail
    x = torch.randn(3, block.conv1.in_channels, 8, 8, dtype=torch.float64)
    block(x)
    assert interpreted == []
    set_triton_tail(block, True)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    block.compiled_tail = True
    block(x)
    assert interpreted == []
    monkeypatch.delenv('TRITON_INTERPRET')
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: False)
    block(x)  # a CPU tensor, no interpreter
    assert interpreted == []


def test_triton_backward_takes_any_gradient_layout():
    """dout as autograd may hand it over: broadcast (a sum's gradient) or with H and W transposed."""
    from timm_sae import tail_triton
    generator = torch.Generator().manual_seed(0)
    z, out = (torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator) for _ in range(2))
    mu, a = torch.randn(3, dtype=torch.float64, generator=generator), torch.randn(2, 3, dtype=torch.float64)
    for dout in (torch.ones(()).double().expand_as(z),
                 torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=generator).transpose(2, 3)):
        g, dz, g_sum, centred_sum = tail_triton.gated_norm_act_backward(dout, out, z, a, mu)
        expected = torch.ops.aten.threshold_backward(dout, out, 0)
        assert torch.equal(g, expected) and torch.equal(dz, expected * a[:, :, None, None])
        assert relative_error(g_sum, expected.sum((2, 3))) < 1e-12
        assert relative_error(centred_sum, (expected * (z - mu.view(-1, 1, 1))).sum((2, 3))) < 1e-12
