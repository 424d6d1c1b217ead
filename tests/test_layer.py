"""The fused SaE layer against a naive per-branch reference (arXiv:2308.13343, author's code)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import make_divisible
from torch import nn

from timm_sae import SqueezeAggregatedExcitation


def reference_sae(layer: SqueezeAggregatedExcitation, x: torch.Tensor) -> torch.Tensor:
    """Per-branch SaE as the paper draws it: k separate FC branches, concat, excite, gate."""
    d, k = layer.rd_channels, layer.cardinality
    z = x.float().mean((2, 3))
    w1, b1 = layer.fc_branches.weight.float(), layer.fc_branches.bias.float()
    branches = [torch.relu(z @ w1[i * d:(i + 1) * d].T + b1[i * d:(i + 1) * d]) for i in range(k)]
    h = torch.cat(branches, dim=1)
    s = torch.sigmoid(h @ layer.fc_excite.weight.float().T + layer.fc_excite.bias.float())[:, :, None, None]
    return x.float() * (1 + s) if layer.residual else x.float() * s


def _randomise(layer: nn.Module) -> None:
    """Weights large enough that the ReLU cuts and the gate is far from 0.5."""
    for p in layer.parameters():
        nn.init.normal_(p, std=0.5)


@settings(max_examples=60, deadline=None)
@given(
    channels=st.integers(1, 96),
    cardinality=st.integers(1, 8),
    rd_ratio=st.sampled_from([1 / 32, 1 / 16, 1 / 4, 0.5, 1.0]),
    batch=st.integers(1, 3),
    size=st.sampled_from([(1, 1), (2, 3), (5, 5), (7, 4)]),
    residual=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2 ** 16),
)
def test_fused_matches_per_branch_reference(
        channels, cardinality, rd_ratio, batch, size, residual, channels_last, seed):
    torch.manual_seed(seed)
    layer = SqueezeAggregatedExcitation(channels, cardinality=cardinality, rd_ratio=rd_ratio, residual=residual)
    _randomise(layer)
    x = torch.randn(batch, channels, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_sae(layer, x), rtol=0, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(channels=st.sampled_from([8, 32, 64, 256]), cardinality=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_bf16_matches_reference(channels, cardinality, seed):
    torch.manual_seed(seed)
    layer = SqueezeAggregatedExcitation(channels, cardinality=cardinality)
    _randomise(layer)
    x = torch.randn(2, channels, 4, 4)
    layer_bf16, x_bf16 = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.no_grad():
        out = layer_bf16(x_bf16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference_sae(layer_bf16, x_bf16), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('channels, expected', [
    (64, 8), (256, 8), (512, 16), (1024, 32), (2048, 64), (300, 8), (400, 16)])
def test_default_branch_width_follows_author(channels, expected):
    layer = SqueezeAggregatedExcitation(channels)
    assert layer.rd_channels == expected == make_divisible(channels / 32, 8, round_limit=0.)
    assert layer.fc_branches.out_features == 4 * expected
    assert layer.fc_excite.in_features == 4 * expected and layer.fc_excite.out_features == channels


def test_rd_channels_overrides_ratio_and_options_reach_modules():
    layer = SqueezeAggregatedExcitation(
        64, cardinality=3, rd_channels=5, bias=False, act_layer='gelu', gate_layer='hard_sigmoid')
    assert layer.fc_branches.out_features == 15 and layer.fc_branches.bias is None
    assert type(layer.act).__name__ == 'GELU'
    assert 'hard' in type(layer.gate).__name__.lower()


def test_residual_gate_is_x_times_one_plus_s():
    torch.manual_seed(0)
    with_res, without = SqueezeAggregatedExcitation(16), SqueezeAggregatedExcitation(16, residual=False)
    without.load_state_dict(with_res.state_dict())
    x = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(with_res(x), x + without(x), rtol=0, atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    layer = SqueezeAggregatedExcitation(32, cardinality=4)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_scripts_and_keeps_dtype_device():
    layer = SqueezeAggregatedExcitation(16, device='meta', dtype=torch.float16)
    assert layer.fc_branches.weight.device.type == 'meta' and layer.fc_excite.weight.dtype == torch.float16
    eager = SqueezeAggregatedExcitation(16).eval()
    scripted = torch.jit.script(eager)
    x = torch.randn(1, 16, 2, 2)
    torch.testing.assert_close(scripted(x), eager(x), rtol=0, atol=0)


@pytest.mark.parametrize('kwargs, argument', [
    (dict(channels=0), 'channels'),
    (dict(channels=16.0), 'channels'),
    (dict(channels=16, cardinality=0), 'cardinality'),
    (dict(channels=16, cardinality=2.5), 'cardinality'),
    (dict(channels=16, cardinality=True), 'cardinality'),
    (dict(channels=16, rd_ratio=0.0), 'rd_ratio'),
    (dict(channels=16, rd_ratio=1.5), 'rd_ratio'),
    (dict(channels=16, rd_ratio=-0.1), 'rd_ratio'),
    (dict(channels=16, rd_ratio='1/32'), 'rd_ratio'),
    (dict(channels=16, rd_channels=-3), 'rd_channels'),
])
def test_bad_arguments_name_the_argument_and_range(kwargs, argument):
    with pytest.raises(ValueError, match=rf'^{argument}\b.*(>= 1|\(0, 1\])'):
        SqueezeAggregatedExcitation(**kwargs)
