"""The exact training tail (``timm_sae.tail``): values, every gradient and the running statistics equal timm's
own tail (the same block with ``fast_tail = False``), and it runs only where it stands in exactly.

Exactness runs in float64, where the two forms differ by rounding alone (about 1e-13), so the 1e-9 tolerance
cannot hide a wrong formula: 3 training steps (forward, backward, an SGD step) per case, every block kind of the
family (BasicBlock, Bottleneck, grouped, downsample, avg-down, anti-aliased), residual and plain gate,
``momentum=None``, drop_path, channels_last, timm's zero-initialised last BatchNorm, and a channel whose mean is
250 times its spread.
"""
import copy
from typing import List, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from conftest import F64_REL, assert_equal_records, fast_or_slow, random_float64_, train_steps
from timm_sae import SqueezeAggregatedExcitation, tail
from timm_sae._testing import relative_error
from timm_sae.blocks import SaEBasicBlock, SaEBottleneck, set_fast_tail
from timm_sae.tail import gate_of, gated_tail

pytestmark = pytest.mark.usefixtures('single_thread')

# (architecture, block): one of each kind the family has
BLOCKS = {
    'basic-downsample': ('saeresnet18', 'layer2.0'),
    'basic': ('saeresnet18', 'layer1.1'),
    'bottleneck-downsample': ('saeresnet26', 'layer2.0'),
    'bottleneck': ('saeresnet26', 'layer3.1'),
    'grouped-avg-down': ('saeresnext26d_32x4d', 'layer2.0'),
    'anti-aliased-avg-down': ('saeresnetaa50d', 'layer3.0'),
}
VARIANTS = ('default', 'plain-gate', 'momentum-none', 'drop-path', 'channels-last', 'gamma-zero')


def _block(arch: str, path: str, variant: str, seed: int = 0) -> nn.Module:
    """A float64 train-mode block with seeded random parameters and BatchNorm statistics."""
    kwargs = {'sae_residual': False} if variant == 'plain-gate' else {}
    block = copy.deepcopy(timm.create_model(arch, device='meta', **kwargs).get_submodule(path))
    block = random_float64_(block.to_empty(device='cpu'), seed)
    last_norm = block.bn3 if isinstance(block, SaEBottleneck) else block.bn2
    if variant == 'momentum-none':
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
    if variant == 'gamma-zero':
        nn.init.zeros_(last_norm.weight)
    if variant == 'drop-path':
        block.drop_path = DropPath(0.3)
    return block.train()


def _params(kinds, variants) -> list:
    """Fast: every kind's default and every variant of one Bottleneck and one BasicBlock; the rest slow."""
    fast = {f'{kind}-{variant}' for kind in kinds for variant in variants
            if variant == 'default' or kind in ('bottleneck-downsample', 'basic-downsample')}
    cases = [(kind, variant) for kind in kinds for variant in variants]
    return [pytest.param(kind, variant, id=f'{kind}-{variant}',
                         marks=() if f'{kind}-{variant}' in fast else pytest.mark.slow) for kind, variant in cases]


@pytest.mark.parametrize('kind, variant', _params(BLOCKS, VARIANTS))
def test_block_training_equals_timm_tail(kind: str, variant: str, tail_calls: List[int]):
    """3 training steps: outputs, gradients (input, shortcut path, every parameter) and running statistics."""
    arch, path = BLOCKS[kind]
    block = _block(arch, path, variant)
    reference = copy.deepcopy(block)
    assert set_fast_tail(reference, False) == 1
    x = torch.randn(3, block.conv1.in_channels, 8, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    if variant == 'channels-last':
        block, reference = (m.to(memory_format=torch.channels_last) for m in (block, reference))
        x = x.contiguous(memory_format=torch.channels_last)
    fast = train_steps(block, x)
    assert len(tail_calls) == 3
    assert_equal_records(fast, train_steps(reference, x))


def _compiled_case(kind: str, memory_format: torch.memory_format) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """A block, its timm-tail copy and an input, in ``memory_format``."""
    arch, path = BLOCKS[kind]
    block = _block(arch, path, 'default').to(memory_format=memory_format)
    reference = copy.deepcopy(block)
    set_fast_tail(reference, False)
    x = torch.randn(3, block.conv1.in_channels, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return block, reference, x.contiguous(memory_format=memory_format)


MEMORY_FORMATS = {'nchw': torch.contiguous_format, 'channels-last': torch.channels_last}


@pytest.mark.parametrize('layout', MEMORY_FORMATS)
@pytest.mark.parametrize('kind', ['basic-downsample', 'bottleneck-downsample'])
def test_compiled_formulas_equal_timm_tail(kind: str, layout: str, tail_calls: List[int], monkeypatch):
    """The forms the tail takes while torch.compile traces it (plain reductions Inductor fuses, in place of the
    eager per-sample kernels), run eagerly: 3 training steps equal timm's tail."""
    block, reference, x = _compiled_case(kind, MEMORY_FORMATS[layout])
    block.compiled_tail = True  # NCHW too
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    fast = train_steps(block, x)
    assert len(tail_calls) == 3
    assert_equal_records(fast, train_steps(reference, x))


@pytest.mark.parametrize('compiled_tail, layout, runs', [
    (None, 'channels-last', True), (None, 'nchw', False), (False, 'channels-last', False), (True, 'nchw', True)])
def test_compiled_tail_by_memory_format(compiled_tail, layout: str, runs: bool, tail_calls: List[int], monkeypatch):
    """Under torch.compile the tail runs by default where it measured faster than timm's form (channels_last);
    ``compiled_tail`` True / False runs it always / never. Eager, it runs in either layout."""
    block, _, x = _compiled_case('bottleneck', MEMORY_FORMATS[layout])
    block.compiled_tail = compiled_tail
    block(x)
    assert len(tail_calls) == 1
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    block(x)
    assert len(tail_calls) == 1 + runs


@pytest.mark.slow
@pytest.mark.parametrize('layout', MEMORY_FORMATS)
def test_compiled_block_training_equals_timm_tail(layout: str):
    """The tail traced by torch.compile (one graph, its backward included): 3 training steps equal timm's tail."""
    torch._dynamo.reset()
    block, reference, x = _compiled_case('bottleneck-downsample', MEMORY_FORMATS[layout])
    block.compiled_tail = True  # NCHW too
    block.compile(backend='aot_eager', fullgraph=True)
    assert_equal_records(train_steps(block, x), train_steps(reference, x))


def _sae_tail_reference(z, norm, sae, shortcut):
    return F.relu(sae(norm(z)) + shortcut)


def _large_mean_case(dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(4, 16, 6, 6, generator=generator, dtype=torch.float64)
    z[:, 0] = z[:, 0] * 0.01 + 2.5  # mean 250 times the spread
    z[:, 1] = z[:, 1] + 250.
    shortcut = torch.randn(4, 16, 6, 6, generator=generator, dtype=torch.float64)
    return z.to(dtype), shortcut.to(dtype)


def test_large_mean_channel_float64():
    """A channel whose mean is 250 times its spread: values, gradients and running statistics (float64)."""
    torch.manual_seed(0)
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        norm = nn.BatchNorm2d(16).double().train()
        sae = SqueezeAggregatedExcitation(16, rd_channels=8).double()
        z, shortcut = _large_mean_case(torch.float64)
        z.requires_grad_()
        shortcut.requires_grad_()
        out = gated_tail(z, norm, gate_of(sae), shortcut) if fast else _sae_tail_reference(z, norm, sae, shortcut)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append([out, z.grad, shortcut.grad, norm.running_mean, norm.running_var,
                        *(p.grad for p in list(norm.parameters()) + list(sae.parameters()))])
    for got, want in zip(*results, strict=True):
        assert relative_error(got, want) < F64_REL


@pytest.mark.parametrize('layout', MEMORY_FORMATS)
def test_backward_leaves_given_gradients_unchanged(layout: str):
    """The statistics' share of z's gradient is added in place to the gated pass's own: the gradient a caller gives
    stays as it was, and a z read elsewhere too gets the sum of both uses' gradients (float64)."""
    memory_format = MEMORY_FORMATS[layout]
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        norm = nn.BatchNorm2d(16).double().train()
        sae = SqueezeAggregatedExcitation(16, rd_channels=8).double()
        z, shortcut = (t.contiguous(memory_format=memory_format).requires_grad_()
                       for t in _large_mean_case(torch.float64))
        out = gated_tail(z, norm, gate_of(sae), shortcut) if fast else _sae_tail_reference(z, norm, sae, shortcut)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out).contiguous(memory_format=memory_format)
        given = grad.clone()
        results.append(torch.autograd.grad((out, z.square()), (z, shortcut), (grad, torch.ones_like(z))))
        assert torch.equal(grad, given)
    for got, want in zip(*results, strict=True):
        assert relative_error(got, want) < F64_REL


# the eager channels_last tail's two reductions, forced by its threshold (bytes a sample): per-sample norm kernels,
# whole-tensor reductions
REDUCTIONS = {'per-sample': 0, 'whole-tensor': 1 << 62}


@pytest.mark.parametrize('reductions', REDUCTIONS)
@pytest.mark.parametrize('kind', ['basic-downsample', 'bottleneck-downsample'])
def test_channels_last_reductions_equal_timm_tail(kind: str, reductions: str, tail_calls: List[int], monkeypatch):
    """Eager channels_last: either reduction the tail picks by a sample's size trains as timm's tail (3 steps)."""
    monkeypatch.setattr(tail, 'PER_SAMPLE_KERNELS_FROM_BYTES', REDUCTIONS[reductions])
    block, reference, x = _compiled_case(kind, torch.channels_last)
    fast = train_steps(block, x)
    assert len(tail_calls) == 3
    assert_equal_records(fast, train_steps(reference, x))


def test_per_sample_kernels_on_the_cpu_only():
    """The per-sample loop's size rule holds on the CPU; elsewhere each call is a kernel launch."""
    large = (8, 64, 56, 56)  # 784 KiB a sample in fp32
    assert tail.per_sample_kernels(torch.empty(large))
    assert not tail.per_sample_kernels(torch.empty(large, dtype=torch.bfloat16)[:, :16])
    assert not tail.per_sample_kernels(torch.empty(large, device='meta'))



@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('a_shape', [(6, 1, 1), (4, 6, 1, 1)], ids=['per-channel', 'per-sample'])
def test_affine_equals_addcmul_bit_for_bit(dtype, memory_format, a_shape):
    """``z a + b`` as the tail forms it (NCHW: a BatchNorm kernel; else addcmul) is addcmul's, bit for bit, in z's
    layout, with a per-(n, c) ``b`` and a per-(n, c) ``a`` (the gated norm) or a per-channel one."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 5, 7, generator=generator).to(dtype).contiguous(memory_format=memory_format)
    a = torch.randn(a_shape, generator=generator, dtype=tail._stats_dtype(z))
    b = torch.randn(4, 6, 1, 1, generator=generator, dtype=tail._stats_dtype(z))
    out = tail._affine(z, a, b, z.dtype)
    expected = torch.addcmul(b, z.to(a.dtype), a).to(dtype)
    assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format)
    assert torch.equal(out, expected)


# (torch.compile tracing, memory format, the channels_last threshold)
STATISTICS_FORMS = {
    'eager-nchw': (False, torch.contiguous_format, 0),
    'eager-channels-last-per-sample': (False, torch.channels_last, REDUCTIONS['per-sample']),
    'eager-channels-last-whole-tensor': (False, torch.channels_last, REDUCTIONS['whole-tensor']),
    'compiling': (True, torch.contiguous_format, 0),
}


@pytest.mark.parametrize('form', STATISTICS_FORMS)
def test_statistics_as_accurate_as_batchnorm_float32(form: str, monkeypatch):
    """fp32 running statistics and outputs as close to the float64 truth as BatchNorm's own, at 250x mean/spread,
    eager in either layout (channels_last: both reductions) and in the form torch.compile traces."""
    compiling, memory_format, threshold = STATISTICS_FORMS[form]
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: compiling)
    monkeypatch.setattr(tail, 'PER_SAMPLE_KERNELS_FROM_BYTES', threshold)
    assert_statistics_as_accurate_as_batchnorm(memory_format)


def assert_statistics_as_accurate_as_batchnorm(memory_format: torch.memory_format, **tail_options) -> None:
    """The fp32 tail (``gated_tail(..., **tail_options)``) on a channel with mean 250x its spread: running mean,
    running variance and output within 4x BatchNorm's own error against the float64 truth (or 1e-6)."""
    errors = {}
    for name in ('fast', 'batchnorm'):
        torch.manual_seed(0)
        norm, sae = nn.BatchNorm2d(16), SqueezeAggregatedExcitation(16, rd_channels=8)
        exact_norm = copy.deepcopy(norm).double()
        z, shortcut = (t.contiguous(memory_format=memory_format) for t in _large_mean_case(torch.float32))
        with torch.no_grad():
            truth = _sae_tail_reference(z.double(), exact_norm, copy.deepcopy(sae).double(), shortcut.double())
            out = gated_tail(z, norm, gate_of(sae), shortcut, **tail_options) if name == 'fast' else \
                _sae_tail_reference(z, norm, sae, shortcut)
        errors[name] = [relative_error(norm.running_mean.double(), exact_norm.running_mean),
                        relative_error(norm.running_var.double(), exact_norm.running_var),
                        relative_error(out.double(), truth)]
    for fast_error, bn_error in zip(errors['fast'], errors['batchnorm'], strict=True):
        assert fast_error <= max(4 * bn_error, 1e-6), errors


@pytest.mark.parametrize('kind', ['basic-downsample', 'bottleneck-downsample'])
def test_bf16_autocast_within_bf16_rounding(kind: str):
    """Under CPU bf16 autocast the output and every gradient are as close to the float64 truth as timm's tail's
    (within twice its error plus a bf16 rounding of the largest entry)."""
    arch, path = BLOCKS[kind]
    block = _block(arch, path, 'default')
    x = torch.randn(3, block.conv1.in_channels, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for name in ('fast', 'timm', 'truth'):
        model = copy.deepcopy(block) if name == 'truth' else copy.deepcopy(block).float()
        set_fast_tail(model, name == 'fast')
        xx = (x if name == 'truth' else x.float()).clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=name != 'truth'):
            out = model(xx)
        assert out.dtype == (torch.float64 if name == 'truth' else torch.bfloat16)
        (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results[name] = [out, xx.grad, *(p.grad for p in model.parameters())]
    for fast, timm_tail, truth in zip(results['fast'], results['timm'], results['truth'], strict=True):
        assert relative_error(fast.double(), truth) <= 2 * relative_error(timm_tail.double(), truth) + 2 ** -8


@pytest.mark.parametrize('arch', fast_or_slow(['saeresnet18', 'saeresnext26d_32x4d', 'saeresnet50'],
                                              {'saeresnet18', 'saeresnext26d_32x4d'}))
def test_model_training_step_equals_timm_tail(arch: str, tail_calls: List[int]):
    """A whole model: 2 training steps with drop_path, float64, values, gradients and buffers."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, drop_path_rate=0.1).double().train()
    with torch.no_grad():  # timm zero-initialises the last norms: give the gates something to do
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    reference = copy.deepcopy(model)
    set_fast_tail(reference, False)
    # 4 images of 64 px: layer4's BatchNorm then has 16 values per channel (with 2 its gradients are so ill
    # conditioned that rounding alone moves them by 1e-9)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # a small step: a whole network's outputs amplify the last-bit differences of a large update
    fast = train_steps(model, x, steps=2, lr=1e-4)
    assert len(tail_calls) == 2 * len([m for m in model.modules() if isinstance(m, (SaEBottleneck, SaEBasicBlock))])
    assert_equal_records(fast, train_steps(reference, x, steps=2, lr=1e-4))


@pytest.mark.parametrize('where', ['se', 'bn3', 'act3', 'global'])
def test_hooks_get_timm_tail(where: str, tail_calls: List[int]):
    """A forward hook on the modules the tail stands in for (or a global one) sees them run, as on seresnet."""
    model = timm.create_model('saeresnet26', num_classes=5).train()
    block = model.layer3[1]
    seen = []

    def hook(module, args, output):
        seen.append(output.shape)
    if where == 'global':
        handle = nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = getattr(block, where).register_forward_hook(hook)
    try:
        model(torch.randn(2, 3, 64, 64)).sum().backward()
    finally:
        handle.remove()
    assert seen
    if where == 'global':
        assert not tail_calls
    else:
        assert len(tail_calls) == len([m for m in model.modules() if isinstance(m, SaEBottleneck)]) - 1


def test_sync_batchnorm_alone_takes_the_tail(tail_calls: List[int]):
    """A model converted with SyncBatchNorm.convert_sync_batchnorm trains exactly in one process."""
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(timm.create_model('saeresnet18', num_classes=5)).double().train()
    reference = copy.deepcopy(model)
    set_fast_tail(reference, False)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    fast = train_steps(model, x, steps=2, lr=1e-4)
    assert tail_calls
    assert_equal_records(fast, train_steps(reference, x, steps=2, lr=1e-4))


@pytest.mark.parametrize('act', [nn.SiLU, nn.LeakyReLU])
def test_other_activation_takes_timm_tail(act, tail_calls: List[int]):
    """The tail's backward is written for ReLU: another activation runs timm's tail."""
    model = timm.create_model('saeresnet18', num_classes=5, act_layer=act).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert not tail_calls
