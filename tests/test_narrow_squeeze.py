"""The SaE Bottleneck's narrow squeeze (``timm_sae.blocks``) is exact, and the models stay as visible as
timm's seresnet to the tools that look inside models.

Exactness runs in float64, where the narrow and the SE form differ by rounding alone (about 1e-13), so
the 1e-9 tolerance cannot hide a wrong formula. The reference is the same model with the SE form
everywhere (the SaE layer squeezes its full-width input). Every architecture's blocks are checked one
by one (each stage's first and last block, materialised from a meta-device model); whole models on five
that hold every block variant, also in float32 with channels_last and with ``fuse_batchnorm``.

float64 convolutions and their gradients are slow on the CPU (1 to 5 s an architecture on 2 cores), so the
fast suite checks the blocks of saeresnet18 (BasicBlock: the narrow form never runs) and saeresnetaa50d
(anti-aliased Bottleneck) and the whole saeresnet26d (Bottleneck, deep stem, avg-pool downsampling); the
other architectures, the same block variants deeper or wider, run with ``-m slow``.
"""
import copy
from typing import Callable, List

import pytest
import timm
import torch
from timm.models import create_feature_extractor as timm_feature_extractor
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor as tv_feature_extractor

import timm_sae.blocks
from conftest import F64_REL, fast_or_slow, random_float64_, randomise_batchnorm
from timm_sae import SaEBottleneck, fuse_batchnorm, set_fast_tail

FAMILY = timm.list_models('sae*')
WHOLE_MODELS = ('saeresnet26', 'saeresnet26d', 'saeresnet50t', 'saeresnetaa50d', 'saeresnext26t_32x4d')
FAST_BLOCKS = ('saeresnet18', 'saeresnetaa50d')
FAST_WHOLE_MODELS = ('saeresnet26d',)
F32_REL = 1e-5

pytestmark = pytest.mark.usefixtures('single_thread')


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Within ``rel`` of the expected tensor's largest magnitude."""
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * max(scale, 1e-30))


@pytest.fixture
def narrow_calls(monkeypatch: pytest.MonkeyPatch) -> List[bool]:
    """Records, per Bottleneck call, whether the narrow form ran (a test that never ran it proves nothing)."""
    calls: List[bool] = []
    narrow = timm_sae.blocks.narrow_squeeze

    def recording(*args):
        z = narrow(*args)
        calls.append(z is not None)
        return z

    monkeypatch.setattr(timm_sae.blocks, 'narrow_squeeze', recording)
    return calls


@pytest.fixture
def se_form(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable], object]:
    """Runs a callable with the SE form of the squeeze and timm's own tail everywhere (the reference)."""
    def run(fn: Callable):
        with monkeypatch.context() as patch:
            patch.setattr(timm_sae.blocks, 'narrow_squeeze', lambda *args: None)
            patch.setattr(timm_sae.blocks, 'gate_of', lambda module: None)
            return fn()
    return run


def _outputs_and_grads(fn: Callable[[], torch.Tensor], module: nn.Module, inputs: torch.Tensor):
    module.zero_grad(set_to_none=True)
    inputs.grad = None
    out = fn()
    weights = torch.linspace(-1., 1., out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads['input'] = inputs.grad
    return out.detach(), grads


def _check_against_se_form(module: nn.Module, x: torch.Tensor, se_form, rel: float) -> None:
    out, grads = _outputs_and_grads(lambda: module(x), module, x)
    ref_out, ref_grads = se_form(lambda: _outputs_and_grads(lambda: module(x), module, x))
    assert_close_rel(out, ref_out, rel)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert ref_grads[name] is not None, name
        assert_close_rel(grads[name], ref_grads[name], rel)


def _checked_blocks(model: nn.Module) -> List[nn.Module]:
    """Each stage's first block (stride, downsample) and last block (identity shortcut)."""
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    return [block for stage in stages for block in (stage[0], stage[-1])]


@pytest.mark.parametrize('name', fast_or_slow(FAMILY, FAST_BLOCKS))
def test_blocks_match_se_form(name: str, narrow_calls, se_form):
    """Eval-mode block outputs and the gradients of every parameter and of the input."""
    meta_model = timm.create_model(name, device='meta')
    for seed, meta_block in enumerate(_checked_blocks(meta_model)):
        block = random_float64_(copy.deepcopy(meta_block).to(torch.float64).to_empty(device='cpu'), seed).eval()
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(2, block.conv1.in_channels, 4, 4, generator=generator, dtype=torch.float64)
        _check_against_se_form(block, x.requires_grad_(), se_form, F64_REL)
    if isinstance(meta_model.layer1[0], SaEBottleneck):
        assert narrow_calls and all(narrow_calls), 'the narrow form never ran'
    else:
        assert not any(narrow_calls)  # BasicBlock: its 3x3 conv2 takes the SE form's squeeze


@pytest.mark.parametrize('name', fast_or_slow(WHOLE_MODELS, FAST_WHOLE_MODELS))
def test_models_match_se_form(name: str, narrow_calls, se_form):
    """Eval-mode logits and all gradients (float64), channels_last and fuse_batchnorm (float32)."""
    torch.manual_seed(0)
    model = random_float64_(timm.create_model(name, num_classes=5), seed=0).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    _check_against_se_form(model, x, se_form, F64_REL)
    torch.manual_seed(0)
    model = randomise_batchnorm(timm.create_model(name, num_classes=5))
    x = x.detach().float()
    with torch.no_grad():
        reference = se_form(lambda: model(x))
        assert_close_rel(model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)),
                         reference, F32_REL)
        fused = fuse_batchnorm(model)
        assert_close_rel(fused(x), se_form(lambda: fused(x)), F32_REL)
    assert narrow_calls and all(narrow_calls)


@pytest.mark.parametrize('compiling', [False, True], ids=['eager', 'compiling'])
def test_training_takes_no_narrow_squeeze(compiling: bool, narrow_calls, monkeypatch):
    """With batch statistics the squeeze comes from the exact tail's statistics pass (eager and compiled,
    ``timm_sae.tail``), or from the full-width norm output in timm's tail; the narrow form runs in eval."""
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: compiling)
    # channels_last: where the exact tail runs compiled by default (``GatedBottleneck.compiled_tail``)
    model = timm.create_model('saeresnet26', num_classes=5).train().to(memory_format=torch.channels_last)
    model(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert not narrow_calls  # the exact tail returns before the squeeze is asked for
    set_fast_tail(model, False)
    model(torch.randn(2, 3, 64, 64))
    train_calls = len(narrow_calls)
    assert train_calls and not any(narrow_calls)
    set_fast_tail(model, True)
    model.eval()(torch.randn(1, 3, 64, 64))
    assert len(narrow_calls) > train_calls and all(narrow_calls[train_calls:])


# ---------------------------------------------------------------------------------------------------
# the tools that look inside models, side by side with timm's seresnet


@pytest.mark.parametrize('se_name, sae_name, training', [
    ('seresnet18', 'saeresnet18', False), pytest.param('seresnet18', 'saeresnet18', True, marks=pytest.mark.slow),
    ('seresnext26t_32x4d', 'saeresnext26t_32x4d', False), ('seresnext26t_32x4d', 'saeresnext26t_32x4d', True),
], ids=['eval-resnet18', 'train-resnet18', 'eval-resnext26t', 'train-resnext26t'])
@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing the model in train mode are different')
def test_tools_see_the_sae_layer_as_they_see_se(se_name: str, sae_name: str, training: bool):
    """Forward hooks on ``.se`` fire once per block and see the gated map; torch.fx, torchvision's and
    timm's feature extractors trace the models, give the eager outputs and the ``.se`` nodes' shapes
    of seresnet.

    Train mode matters for the Bottleneck (it takes the SE form there); a BasicBlock runs the same code in
    both modes, so its train-mode case is slow."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    shapes = {}
    for name in (se_name, sae_name):
        torch.manual_seed(0)
        model = randomise_batchnorm(timm.create_model(name, num_classes=5)).train(training)
        blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
        seen = []
        hooks = [block.se.register_forward_pre_hook(lambda m, args, seen=seen: seen.append([args[0].clone()]))
                 for block in blocks]
        hooks += [block.se.register_forward_hook(lambda m, args, out, seen=seen: seen[-1].append(out.clone()))
                  for block in blocks]
        with torch.no_grad():
            eager = model(x)
        for hook in hooks:
            hook.remove()
        assert len(seen) == len(blocks)
        for (se_input, se_output), block in zip(seen, blocks, strict=True):
            assert se_output.shape == se_input.shape
            if name == sae_name:
                expected = se_input * block.se.excite(se_input.mean((2, 3)))
                torch.testing.assert_close(se_output, expected)

        traced = torch.fx.symbolic_trace(model)
        nodes = ['layer1.0.se', f'layer4.{len(model.layer4) - 1}.se']
        with torch.no_grad():
            assert_close_rel(traced(x), eager, F32_REL)
            tv_features = tv_feature_extractor(model, return_nodes=nodes + ['fc'])(x)
            timm_features = timm_feature_extractor(model, return_nodes=nodes)(x)
        assert_close_rel(tv_features['fc'], eager, F32_REL)
        shapes[name] = [tuple(tv_features[n].shape) for n in nodes] + [tuple(timm_features[n].shape) for n in nodes]
    assert shapes[sae_name] == shapes[se_name]
    assert all(len(shape) == 4 for shape in shapes[sae_name])
