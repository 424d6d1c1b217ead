"""timm conformance tests for the SaE family (``timm.list_models('sae*')``).

Coverage. Registry, pretrained configs, twin structure and entrypoint arguments run on all 22 models (on the
meta device, each build shared). The per-block reference check, the cfg's pool size and the API tests (heads,
in_chans, features_only with hooks and fx, forward_intermediates, fx training) run on NUMERIC, five models
that hold every structural variant of the family (basic and bottleneck blocks, 7x7 / deep / tiered stems,
avg-pool downsampling, anti-aliasing, grouped convs), three of them (FAST) in the fast suite, and with
``-m slow`` on the other 19: with real weights
for the reference check, on the meta device for the API tests (shapes, channels, reductions and the traced
graph only). Forward + backward with real weights runs on all 22 with ``-m slow`` (fx training checks the
same on NUMERIC, FAST in the fast suite). Gradient checkpointing and TorchScript, whose cost
is rebuilding and recompiling the same block classes at more depth or width, run on NUMERIC, the fast suite
on BLOCK_TYPES (a basic block and a bottleneck).

Inputs are batch 1-2 at 64 px, the smallest size at which every stage keeps a 2x2 map (train-mode
BatchNorm needs more than one value a channel). torch.compile runs with ``-m slow``: one
saeresnet26 Bottleneck with the ``aot_eager`` backend (dynamo's trace of the block and autograd), the
whole model with ``aot_eager`` (dynamo traces every block) and with inductor (C++ compilation from a cold
cache).
"""
import functools
from contextlib import nullcontext
from typing import Dict, Iterator, List, Tuple, Union

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    SEModule,
    drop_path,
    get_graph_node_names,
    make_divisible,
    set_reentrant_ckpt,
    set_scriptable,
    use_reentrant_ckpt,
)
from timm.models import FeatureGraphNet, create_feature_extractor, get_pretrained_cfg
from timm.models.resnet import Bottleneck, ResNet
from torch import nn
from torch.testing import assert_close

from conftest import FAST, fast_or_slow
from timm_sae import SqueezeAggregatedExcitation, sae_resnet
from timm_sae.measure import param_count

FAMILY = (
    'saeresnet18', 'saeresnet34', 'saeresnet50', 'saeresnet50t', 'saeresnet101', 'saeresnet152',
    'saeresnet152d', 'saeresnet200d', 'saeresnet269d', 'saeresnetaa50d', 'saeresnext26d_32x4d',
    'saeresnext26t_32x4d', 'saeresnext50_32x4d', 'saeresnext101_32x4d', 'saeresnext101_32x8d',
    'saeresnext101_64x4d', 'saeresnext101d_32x8d', 'saeresnextaa101d_32x8d', 'saeresnextaa201d_32x8d',
    'saeresnet26', 'saeresnet26d', 'saeresnet50d',
)
# basic block + 7x7 stem; bottleneck + 7x7 stem; deep stem + avg-pool downsampling; anti-aliasing;
# grouped convs + tiered stem
NUMERIC = ('saeresnet18', 'saeresnet26', 'saeresnet26d', 'saeresnetaa50d', 'saeresnext26t_32x4d')
# a basic block and a bottleneck: gradient checkpointing and TorchScript run on the other NUMERIC models with -m slow
BLOCK_TYPES = ('saeresnet18', 'saeresnet26')
SIZE = 64  # input height and width
SAE_KWARGS = dict(sae_cardinality=8, sae_rd_ratio=1. / 16, sae_residual=False)

per_model = pytest.mark.parametrize('name', FAMILY)
# the whole family, the models outside FAST marked slow
per_model_numeric_fast = pytest.mark.parametrize('name', fast_or_slow(FAMILY, FAST))

pytestmark = pytest.mark.usefixtures('single_thread')


def _device(name: str) -> str:
    return 'cpu' if name in NUMERIC else 'meta'


def _create(name: str, device: str = 'cpu', **kwargs) -> nn.Module:
    """A model (or features_only wrapper) initialised from a fixed seed, so that two builds are identical.

    timm zero-inits each block's last norm weight, which makes every SaE input zero. Those weights
    (the only all-zero ones) get fixed values in [0.1, 0.3] here, so that the attention path carries
    signal while the residual stream stays well conditioned.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, device=device, **kwargs)
    if device != 'meta':
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d) and not module.weight.any():
                    module.weight.copy_(torch.linspace(0.1, 0.3, module.num_features))
    return model


@functools.lru_cache(maxsize=None)
def _meta(name: str, **kwargs) -> nn.Module:
    """A model on the meta device, built once per arguments and shared (it holds no storage; the tests only read it)."""
    return timm.create_model(name, device='meta', **kwargs)


def _blocks(model: ResNet) -> List[nn.Module]:
    return [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]


def _last_norm(block: nn.Module) -> nn.Module:
    """The norm layer whose output is the block's SaE input."""
    return block.bn3 if isinstance(block, Bottleneck) else block.bn2


def _last_act(block: nn.Module) -> nn.Module:
    return block.act3 if isinstance(block, Bottleneck) else block.act2


def _image(batch: int = 1, chans: int = 3, device: str = 'cpu') -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, chans, SIZE, SIZE, device=device)


def _grads(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_close_rel(
        actual: Union[torch.Tensor, Dict[str, torch.Tensor]],
        expected: Union[torch.Tensor, Dict[str, torch.Tensor]],
        rel: float = 1e-5,
) -> None:
    """Close to within ``rel`` of each tensor's largest magnitude.

    For results that legitimately round differently (a compiler's fused kernels), which deep
    networks carry forward.
    """
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_close_rel(actual[key], expected[key], rel)
        return
    assert_close(actual, expected, rtol=rel, atol=rel * float(expected.detach().abs().max()))


def _reference_scale(se: SqueezeAggregatedExcitation, x: torch.Tensor) -> torch.Tensor:
    """The paper's multiplier of x, branch by branch: ``1 + s`` (``s`` without the residual), (N, C, 1, 1).

    Branch i owns rows ``i*d .. (i+1)*d - 1`` of ``fc_branches`` (the layer's documented layout).
    """
    z = x.mean((2, 3))
    d, weight, bias = se.rd_channels, se.fc_branches.weight, se.fc_branches.bias
    h = torch.cat([
        torch.relu(z @ weight[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d]) for i in range(se.cardinality)], 1)
    s = torch.sigmoid(h @ se.fc_excite.weight.T + se.fc_excite.bias)
    return (1 + s if se.residual else s)[:, :, None, None]


# ---------------------------------------------------------------------------------------------------
# registry and pretrained configs


def test_list_models_is_the_family():
    assert sorted(timm.list_models('sae*')) == sorted(FAMILY)


def test_tags_are_conversions_of_the_twins_weights():
    """One tag per weight tag timm has for the plain twin (its default first), then for the SE twin (whose default
    is the default without plain weights), else only ``untrained``."""
    tagged = timm.list_models('sae*', include_tags=True)
    assert {name.split('.')[0] for name in tagged} == set(FAMILY)
    for name in FAMILY:
        tags = [t.split('.', 1)[1] for t in tagged if t.split('.')[0] == name]
        twins = [twin for twin in (name.replace('sae', '', 1), name.replace('sae', 'se', 1)) if timm.is_model(twin)]
        sources = [source for twin in twins for source in timm.list_pretrained(f'{twin}.*')]
        if not sources:
            assert tags == ['untrained'], name
            continue
        assert sorted(tags) == sorted(s.replace('.', '_') for s in sources), name
        default = f'{sources[0].split(".")[0]}.{get_pretrained_cfg(sources[0].split(".")[0]).tag}'
        assert get_pretrained_cfg(name).tag == default.replace('.', '_'), name


def test_list_pretrained_is_the_tags_with_weights():
    """Tags whose cfg names a weight source: the conversions, of 20 architectures."""
    tagged = timm.list_models('sae*', include_tags=True)
    expected = {name for name in tagged if get_pretrained_cfg(name).has_weights}
    assert set(timm.list_pretrained('sae*')) == expected
    assert len({name.split('.')[0] for name in expected}) == 20 and len(expected) == 82 + 19


@per_model
def test_pretrained_cfg(name: str):
    """The default tag's cfg: the plain twin's default weights' (data, classes, license) with both papers, else the
    SE twin's, else SaE's."""
    cfg = get_pretrained_cfg(name)
    assert cfg.architecture == name
    twins = [twin for twin in (name.replace('sae', '', 1), name.replace('sae', 'se', 1))
             if timm.is_model(twin) and get_pretrained_cfg(twin).has_weights]
    source = get_pretrained_cfg(twins[0]) if twins else None
    if source is not None:
        twin = twins[0]
        assert cfg.hf_hub_id == source.hf_hub_id == f'timm/{twin}.{source.tag}'
        assert cfg.paper_ids[0] == 'arXiv:2308.13343' and set(cfg.paper_ids[1:]) == set(
            [source.paper_ids] if isinstance(source.paper_ids, str) else source.paper_ids or [])
        for key in ('license', 'num_classes', 'input_size', 'test_input_size', 'crop_pct', 'test_crop_pct',
                    'interpolation', 'mean', 'std', 'pool_size', 'first_conv', 'classifier'):
            assert getattr(cfg, key) == getattr(source, key), key
    else:
        assert cfg.paper_ids == 'arXiv:2308.13343' and cfg.license == 'apache-2.0' and not cfg.has_weights
        assert tuple(cfg.mean) == IMAGENET_DEFAULT_MEAN and tuple(cfg.std) == IMAGENET_DEFAULT_STD
    model = _meta(name)
    assert model.pretrained_cfg['architecture'] == name
    first_conv = model.get_submodule(cfg.first_conv)
    assert first_conv is next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == cfg.input_size[0]
    classifier = model.get_submodule(cfg.classifier)
    assert isinstance(classifier, nn.Linear) and classifier is model.get_classifier()
    assert classifier.out_features == cfg.num_classes


@per_model_numeric_fast
def test_pretrained_cfg_pool_size(name: str):
    """The cfg's input size gives its pool size (a meta-device forward: its cost is one dispatch an op, seconds for
    the deepest models, hence slow outside FAST)."""
    cfg, model = get_pretrained_cfg(name), _meta(name)
    features = model.forward_features(torch.empty(1, *cfg.input_size, device='meta'))
    assert tuple(features.shape[1:]) == (model.num_features, *cfg.pool_size)


# ---------------------------------------------------------------------------------------------------
# structure: each model is its timm twin with SaE as the attention layer


@per_model
def test_twin_structure(name: str):
    """Same modules, parameter names and shapes as the SE (or plain) twin, except the attention layers."""
    names = sae_resnet.twins(name)
    sae, twin = _meta(name), _meta(names.se or names.plain)

    def shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items() if '.se.' not in k}

    def modules(model: nn.Module) -> Dict[str, nn.Module]:
        return {n: m for n, m in model.named_modules() if 'se' not in n.split('.')}

    assert shapes(sae) == shapes(twin)
    sae_modules, twin_modules = modules(sae), modules(twin)
    assert sae_modules.keys() == twin_modules.keys()
    twin_blocks = set(map(id, _blocks(twin)))
    for n, twin_module in twin_modules.items():
        if id(twin_module) in twin_blocks:
            assert isinstance(sae_modules[n], type(twin_module)), n  # SaEBottleneck is a timm Bottleneck
        else:
            assert type(sae_modules[n]) is type(twin_module), n
    for sae_block, twin_block in zip(_blocks(sae), _blocks(twin), strict=True):
        assert isinstance(sae_block.se, SqueezeAggregatedExcitation)
        assert sae_block.se.fc_excite.out_features == _last_norm(twin_block).num_features
        assert twin_block.se is None or isinstance(twin_block.se, SEModule)
    assert sae.feature_info == twin.feature_info


@per_model
def test_entrypoint_kwargs_reach_the_layers(name: str):
    for kwargs, (k, ratio, residual) in ((SAE_KWARGS, (8, 1 / 16, False)), ({}, (4, 1 / 32, True))):
        for block in _blocks(_meta(name, **kwargs)):
            se, channels = block.se, _last_norm(block).num_features
            d = make_divisible(channels * ratio, 8, round_limit=0.)
            assert (se.cardinality, se.rd_channels, se.residual) == (k, d, residual)
            assert (se.fc_branches.in_features, se.fc_branches.out_features) == (channels, k * d)
            assert (se.fc_excite.in_features, se.fc_excite.out_features) == (k * d, channels)


def test_attn_layer_in_block_args_is_refused():
    with pytest.raises(ValueError, match='attn_layer'):
        timm.create_model('saeresnet18', device='meta', block_args=dict(attn_layer='se'))


def test_resnet50_parameter_counts():
    """saeresnet50 = 30,603,912 parameters, timm's seresnet50 = 28,088,024 (1000 classes).

    The difference is the attention layers alone. A bottleneck with C output channels has an SE layer
    of C*r + r + r*C + C parameters (two biased 1x1 maps C -> r -> C, r = C/16 rounded to 8) and an
    SaE layer of C*4d + 4d + 4d*C + C (four branches C -> d as one biased map C -> 4d, then 4d -> C,
    d = C/32 rounded to 8); summed over ResNet-50's 3, 4, 6, 3 blocks of C = 256, 512, 1024, 2048.
    """
    sae, se = 30_603_912, 28_088_024
    assert param_count(_meta('saeresnet50')) == sae
    assert param_count(_meta('seresnet50')) == se
    extra = 0
    for blocks, channels in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True):
        d = make_divisible(channels / 32, 8, round_limit=0.)
        r = make_divisible(channels / 16, 8, round_limit=0.)
        sae_layer = channels * 4 * d + 4 * d + 4 * d * channels + channels
        se_layer = channels * r + r + r * channels + channels
        extra += blocks * (sae_layer - se_layer)
    assert sae - se == extra == 2_515_888


# ---------------------------------------------------------------------------------------------------
# forward, backward, heads and inputs


@pytest.mark.slow
@per_model
def test_forward_backward(name: str):
    """Train-mode forward with a changed num_classes, then every parameter gets a gradient.

    Slow: with real weights; on NUMERIC ``test_fx_backward`` (fast on FAST) checks the same (train mode, 7
    classes, every parameter's gradient) and that the output is eager's."""
    model = _create(name, num_classes=7).train()
    out = model(_image(batch=2))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@per_model_numeric_fast
def test_heads_and_in_chans(name: str):
    device = _device(name)
    model = _create(name, device).eval()
    x = _image(device=device)
    final_size = (SIZE // 32, SIZE // 32)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert logits.shape == (1, 1000)
        assert features.shape == (1, model.num_features, *final_size)
        assert pre_logits.shape == (1, model.num_features) == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
        no_classifier = model(x)
        model.reset_classifier(0, '')
        no_pool = model(x)
        headless = _create(name, device, num_classes=0, global_pool='').eval()
        mono = _create(name, device, in_chans=1).eval()
        mono_out = mono(_image(chans=1, device=device))
        assert no_classifier.shape == pre_logits.shape
        assert no_pool.shape == headless(x).shape == features.shape
        assert mono.get_submodule(mono.pretrained_cfg['first_conv']).in_channels == 1
        assert mono_out.shape == (1, 1000)
        if device != 'meta':
            assert torch.isfinite(logits).all() and torch.isfinite(mono_out).all()
            assert_close(no_classifier, pre_logits)
            assert_close(no_pool, features)
            headless.load_state_dict(model.state_dict())  # a seed alone differs: the fc init draws numbers
            assert_close(headless(x), features)


# ---------------------------------------------------------------------------------------------------
# feature extraction: features_only (hooks and fx), forward_intermediates, fx training


@per_model_numeric_fast
def test_features_and_intermediates(name: str):
    device = _device(name)
    model = _create(name, device).eval()
    features_model = _create(name, device, features_only=True).eval()
    fx_model = _create(name, device, features_only=True, feature_cls='fx').eval()
    assert isinstance(fx_model, FeatureGraphNet)
    x = _image(device=device)
    with torch.no_grad():
        features = features_model(x)
        fx_features = fx_model(x)
        final, intermediates = model.forward_intermediates(x)
        forward_features = model.forward_features(x)
        selected = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        model.set_grad_checkpointing()
        final_ckpt, intermediates_ckpt = model.forward_intermediates(x)

    info = features_model.feature_info
    assert info.reduction() == fx_model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert info.channels() == fx_model.feature_info.channels()
    for outputs in (features, fx_features, intermediates, intermediates_ckpt):
        assert [f.shape[1] for f in outputs] == info.channels()
        assert [tuple(f.shape[2:]) for f in outputs] == [(SIZE // r, SIZE // r) for r in info.reduction()]
    assert final.shape == final_ckpt.shape == forward_features.shape
    if device == 'meta':
        return
    for feature, fx_feature, intermediate, intermediate_ckpt in zip(
            features, fx_features, intermediates, intermediates_ckpt, strict=True):
        assert_close(fx_feature, feature)
        assert_close(intermediate, feature)
        assert_close(intermediate_ckpt, feature)
    assert_close(final, forward_features)
    assert_close(final_ckpt, forward_features)
    assert_close(intermediates[-1], forward_features)
    assert_close(selected, [intermediates[1], intermediates[3]])


@per_model_numeric_fast
@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing the model in train mode are different')
def test_fx_backward(name: str):
    """timm's fx feature extraction traces into every block's SaE layer and trains through it."""
    device = _device(name)
    model = _create(name, device, num_classes=7).train()
    train_nodes, eval_nodes = get_graph_node_names(model)
    for nodes in (train_nodes, eval_nodes):
        assert sum(n.endswith('.se.mul') for n in nodes) == len(_blocks(model))
    fx_model = create_feature_extractor(model, return_nodes=[train_nodes[-1]])
    x = _image(batch=2, device=device)
    out = fx_model(x)[train_nodes[-1]]
    assert out.shape == (2, 7)
    out.mean().backward()
    assert not [n for n, p in fx_model.named_parameters() if p.grad is None]
    if device != 'meta':
        assert_close(out, model(x))


# ---------------------------------------------------------------------------------------------------
# gradient checkpointing, torchscript, torch.compile


@pytest.fixture
def restore_reentrant_ckpt() -> Iterator[None]:
    saved = use_reentrant_ckpt()
    yield
    set_reentrant_ckpt(saved)


@pytest.mark.parametrize('name', fast_or_slow(NUMERIC, BLOCK_TYPES))
@pytest.mark.parametrize('reentrant', [False, True])
def test_grad_checkpointing(name: str, reentrant: bool, restore_reentrant_ckpt: None):
    """Same output and gradients with checkpointing.

    timm's default (non-reentrant) recomputes exactly what the forward ran. Reentrant checkpointing
    runs the forward under no_grad, so the SaE layer gates in place, and recomputes out of place with
    autograd: the two do the same operations in the same order, so both cases are identical, in train
    mode.
    """
    set_reentrant_ckpt(reentrant)
    model = _create(name, num_classes=7).train()
    x = _image(batch=2)
    expected = model(x)
    expected.mean().backward()
    expected_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing()
    out = model(x)
    out.mean().backward()
    assert_close(out, expected, rtol=0, atol=0)
    assert_close(_grads(model), expected_grads, rtol=0, atol=0)


@pytest.mark.parametrize('name', fast_or_slow(NUMERIC, BLOCK_TYPES))
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript(name: str):
    """Scripted and eager models agree with and without autograd (the SaE layer gates in place without).

    TorchScript takes the SE form of the squeeze (``timm_sae.blocks``), eager the narrow one: both exact.
    """
    with set_scriptable(True):
        model = _create(name).eval()
    scripted = torch.jit.script(model)
    x = _image()
    with torch.no_grad():
        _assert_close_rel(scripted(x), model(x))
    _assert_close_rel(scripted(x), model(x))


@pytest.mark.parametrize('backend, whole', [
    pytest.param('aot_eager', False, marks=pytest.mark.slow), pytest.param('aot_eager', True, marks=pytest.mark.slow),
    pytest.param('inductor', True, marks=pytest.mark.slow)], ids=['aot_eager-block', 'aot_eager', 'inductor'])
def test_torch_compile(backend: str, whole: bool):
    """saeresnet26 (Bottlenecks) compiled: the same output with and without grad and the same gradients
    as eager, in eval mode (the narrow squeeze, ``timm_sae.blocks``) and in train mode.

    The fast suite compiles one block (layer2's first: stride 2, downsample); dynamo's trace of the whole
    model, every block again, runs with -m slow."""
    torch._dynamo.reset()
    model = _create('saeresnet26', num_classes=7).eval()
    if whole:
        x = _image(batch=2)
    else:
        model = model.layer2[0]
        x = torch.randn(2, model.conv1.in_channels, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        _assert_close_rel(compiled(x), model(x), 1e-4)
    if backend == 'inductor':
        return  # a backward graph would double the C++ compile time
    for training in (False, True):
        model.train(training)
        expected = model(x)
        expected.sum().backward()
        expected_grads = _grads(model)
        model.zero_grad(set_to_none=True)
        out = compiled(x)
        out.sum().backward()
        _assert_close_rel(out, expected, 1e-4)
        _assert_close_rel(_grads(model), expected_grads, 1e-4)
        model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------
# every SaE layer of a built model against the paper's formula


@pytest.mark.parametrize('name, kwargs', fast_or_slow([(name, {}) for name in FAMILY], FAST, key=lambda v: v[0]) + [
    ('saeresnet18', SAE_KWARGS), ('saeresnext26t_32x4d', SAE_KWARGS)])
def test_every_block_matches_reference(name: str, kwargs: dict):
    """Each block's SaE layer computes the formula on its captured input, and the block output is
    ``act(shortcut + x * scale)``. The model runs under no_grad (the hooks make the blocks take timm's own
    tail, where the layer gates in place); without hooks (the gate folded into BatchNorm's affine) its output
    is the same up to rounding, and identical in inference mode and with autograd."""
    model = _create(name, **kwargs).eval()
    captured: Dict[nn.Module, Dict[str, torch.Tensor]] = {block: {} for block in _blocks(model)}
    handles = []
    for block, store in captured.items():
        handles += [
            block.register_forward_pre_hook(lambda m, args, store=store: store.update(input=args[0].clone())),
            block.register_forward_hook(lambda m, args, out, store=store: store.update(output=out.clone())),
            _last_norm(block).register_forward_hook(lambda m, args, out, store=store: store.update(x=out.clone())),
        ]
    x = _image()
    with torch.no_grad():
        expected = model(x)
    for handle in handles:
        handle.remove()

    with torch.no_grad():
        for block, store in captured.items():
            se, block_x = block.se, store['x']
            scale = _reference_scale(se, block_x)
            assert_close(se.excite(block_x.mean((2, 3))), scale)
            assert_close(se(block_x.clone()), block_x * scale)
            shortcut = store['input'] if block.downsample is None else block.downsample(store['input'])
            assert_close(store['output'], _last_act(block)(shortcut + block_x * scale))
        folded = model(x)
        # the fold rounds otherwise than BatchNorm followed by the gate, and fp32 rounding adds up over the
        # deepest models' blocks: a tolerance relative to the logits' scale (a wrong fold is off by O(1))
        assert_close(folded, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
        with torch.inference_mode():
            assert_close(model(x), folded, rtol=0, atol=0)
    assert_close(model(x), folded, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# stochastic depth


@pytest.mark.parametrize('name', ['saeresnet18', 'saeresnet26d'])
@pytest.mark.parametrize('grad', [True, False])
def test_block_drop_path_matches_timm(name: str, grad: bool):
    """A train-mode block with stochastic depth equals ``act(shortcut + drop_path(x * scale))`` with
    timm's drop_path and the same RNG state, with and without autograd."""
    model = _create(name, drop_path_rate=0.5).train()
    block = _blocks(model)[-1]
    assert block.drop_path.drop_prob == 0.5
    torch.manual_seed(2)
    inp = torch.randn(12, block.conv1.in_channels, 4, 4)
    with nullcontext() if grad else torch.no_grad():
        torch.manual_seed(5)
        out = block(inp)
    with torch.no_grad():
        if isinstance(block, Bottleneck):
            x = block.act1(block.bn1(block.conv1(inp)))
            x = block.aa(block.act2(block.drop_block(block.bn2(block.conv2(x)))))
            x = block.bn3(block.conv3(x))
        else:
            x = block.aa(block.act1(block.drop_block(block.bn1(block.conv1(inp)))))
            x = block.bn2(block.conv2(x))
        shortcut = inp if block.downsample is None else block.downsample(inp)
        scale = block.se.excite(x.mean((2, 3)))
        torch.manual_seed(5)
        expected = _last_act(block)(shortcut + drop_path(x * scale, 0.5, training=True))
        dropped = expected.eq(_last_act(block)(shortcut.clone())).flatten(1).all(1)
    assert_close(out.detach(), expected)
    assert dropped.any() and not dropped.all()
