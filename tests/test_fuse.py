"""BatchNorm folding (timm_sae.fuse): same outputs, no BatchNorm left, original untouched."""
import pytest
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import timm_sae  # noqa: F401  registers the SaE models
from conftest import randomise_batchnorm
from timm_sae.fuse import fuse_batchnorm

# basic blocks; bottlenecks with a deep stem and avg-pool downsampling; grouped bottlenecks; timm's SE
MODELS = ['saeresnet18', 'saeresnet26d', 'saeresnext26t_32x4d', 'seresnet18']

pytestmark = pytest.mark.usefixtures('single_thread')


def _model_with_random_bn(name: str, **kwargs) -> nn.Module:
    """An eval model whose BatchNorms have non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    return randomise_batchnorm(timm.create_model(name, num_classes=10, **kwargs))


def _bn_names(model: nn.Module) -> list:
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


@pytest.fixture(scope='module')
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('name', MODELS)
def test_fused_matches_unfused(name, inputs):
    model = _model_with_random_bn(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model, strict=True)

    assert _bn_names(fused) == []
    assert not fused.training
    with torch.no_grad():
        expected, got = model(inputs), fused(inputs)
    assert (got - expected).abs().max().item() < 1e-4 * max(1., expected.abs().max().item())

    # the original keeps its BatchNorms, parameters and buffers
    assert len(_bn_names(model)) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_fused_scripts_and_runs_channels_last(inputs):
    model = _model_with_random_bn('saeresnet18')
    fused = fuse_batchnorm(model)
    with torch.no_grad():
        expected = model(inputs)
        scripted = torch.jit.script(fused)
        assert torch.allclose(scripted(inputs), expected, atol=1e-4)
        fused_cl = fused.to(memory_format=torch.channels_last)
        got = fused_cl(inputs.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4)


def test_training_mode_raises():
    model = timm.create_model('saeresnet18', num_classes=10)
    with pytest.raises(RuntimeError, match='eval'):
        fuse_batchnorm(model)


def test_non_adjacent_batchnorm_is_left_or_raises(inputs):
    # replace_stem_pool with anti-aliasing builds conv -> AvgPool2d -> bn: not foldable
    model = _model_with_random_bn('saeresnet18', replace_stem_pool=True, aa_layer=nn.AvgPool2d)
    fused = fuse_batchnorm(model)
    assert _bn_names(fused) == ['maxpool.2']
    with torch.no_grad():
        assert torch.allclose(fused(inputs), model(inputs), atol=1e-4)
    with pytest.raises(ValueError, match='maxpool.2'):
        fuse_batchnorm(model, strict=True)
