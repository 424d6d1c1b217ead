"""Exact warm starts: timm's plain and SE ResNet weights converted to SaE (timm_sae.convert), the registered
conversion tags through timm's own Hub loading, and ``timm-sae convert``.

Exactness is checked in fp32 on sources whose BatchNorm affine parameters and running statistics are random
(timm zero-initialises each block's last BN weight, which would make every SaE input 0 and the check empty):
max |converted logits - source logits| / max |source logits| <= 1e-5 (``EXACT_RTOL``). The fast suite converts
saeresnet18 (basic blocks), saeresnet26d (bottlenecks) and saeresnext26t_32x4d (grouped, from SE weights); the
conversions of the other architectures, the same block variants deeper or wider, run with ``-m slow``.
"""
import functools
import json
import logging
from typing import List, Sequence, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from torch import nn

import timm_sae  # noqa: F401
from conftest import FAST, fast_or_slow, randomise_batchnorm
from timm_sae import checkpoint, convert, hub, sae_resnet
from timm_sae._testing import EXACT_RTOL, layout_hub_cache, offline_hub_cache, relative_error
from timm_sae.cli import main
from timm_sae.family import family_table

pytestmark = pytest.mark.usefixtures('single_thread')

SIZE = 64


def _is_se_sourced(name: str) -> bool:
    return sae_resnet.loads_se_weights(name.split('.')[0], vars(get_pretrained_cfg(name)))


TAGS = timm.list_pretrained('sae*')
SE_SOURCED = [name for name in TAGS if _is_se_sourced(name)]
PLAIN_PAIRS = sorted({  # (SaE architecture, timm plain twin) of every conversion tag of plain weights
    (name.split('.')[0], sae_resnet.twins(name).plain) for name in TAGS if name not in SE_SOURCED})
SE_PAIRS = sorted(  # (SaE architecture, timm SE twin) where timm has SE weights
    (name, sae_resnet.twins(name).se) for name in timm.list_models('sae*')
    if sae_resnet.twins(name).se and timm.list_pretrained(f'{sae_resnet.twins(name).se}.*'))
SE_DEFAULT_TAGS = [  # (the conversion of the SE twin's default tag, the SE twin) of every architecture with one
    (f"{name}.{sae_resnet.conversion_tag(f'{se}.{get_pretrained_cfg(se).tag}')}", se) for name, se in SE_PAIRS]
# the conversions the fast suite checks: a basic block, a bottleneck (deep stem, avg-pool downsampling) and a
# grouped bottleneck; the other architectures hold the same block variants at more depth or width (slow)


def _fast_or_slow(pairs: Sequence[Tuple[str, str]]) -> list:
    """pytest params of (SaE name, source) pairs, those of architectures not in FAST marked slow."""
    return fast_or_slow(pairs, FAST, key=lambda pair: pair[0].split('.')[0])


@functools.lru_cache(maxsize=3)
def _source(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A seeded timm model with random BatchNorm statistics. The last three are kept (the fast suite uses three
    most of the time) and shared: the tests only read them."""
    torch.manual_seed(seed)
    return randomise_batchnorm(timm.create_model(name, **kwargs), seed=1)


def _relative_error(model: nn.Module, reference: nn.Module, in_chans: int = 3) -> float:
    x = torch.randn(2, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = reference.eval()(x), model.eval()(x)
    return relative_error(actual, expected)


def _sae_layers(model: nn.Module) -> List[timm_sae.SqueezeAggregatedExcitation]:
    """The model's SaE layers, at least one: a check of each layer passes for a model without any."""
    layers = [m for m in model.modules() if isinstance(m, timm_sae.SqueezeAggregatedExcitation)]
    assert layers, f'{type(model).__name__} has no SaE layer'
    return layers


def _converted(source: nn.Module, name: str, **kwargs) -> nn.Module:
    model = timm.create_model(name, **kwargs)
    model.load_state_dict(convert.convert_state_dict(source.state_dict(), model))
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# the conversion itself


def test_every_conversion_tag_has_a_pair():
    assert len(PLAIN_PAIRS) == 15 and all(source for _, source in PLAIN_PAIRS)
    assert len(SE_PAIRS) == 11 and len(SE_SOURCED) == 19 and len(TAGS) == 82 + 19
    assert {name.split('.')[0] for name in SE_SOURCED} == {name for name, _ in SE_PAIRS}


@pytest.mark.parametrize('name,source', _fast_or_slow(PLAIN_PAIRS))
def test_plain_to_residual_gate_is_exact(name, source):
    reference = _source(source)
    model = _converted(reference, name)
    assert _relative_error(model, reference) <= EXACT_RTOL
    for block in _sae_layers(model):
        assert not block.fc_excite.weight.any() and not block.fc_excite.bias.any()
        assert block.fc_branches.weight.std() > 0  # the branches keep the model's own initialisation


@pytest.mark.parametrize('name,source', _fast_or_slow(SE_PAIRS))
def test_se_to_plain_gate_is_exact(name, source):
    reference = _source(source)
    model = _converted(reference, name, sae_residual=False)
    assert _relative_error(model, reference) <= EXACT_RTOL


@pytest.mark.parametrize('kwargs', [
    dict(sae_residual=False), dict(sae_cardinality=1, sae_rd_ratio=1 / 16), dict(sae_cardinality=8),
], ids=['plain-gate', 'k1', 'k8'])
def test_plain_source_into_other_sae_arguments(kwargs):
    reference = _source('resnet26d')
    assert _relative_error(_converted(reference, 'saeresnet26d', **kwargs), reference) <= EXACT_RTOL


@pytest.mark.slow
def test_every_se_twin_fits_the_default_branches():
    """SE's reduction (C/16) fits SaE's k*d = C/8 in every block of every SE twin (checked on the meta device).

    Slow: a sweep of 18 pairs of meta-device builds; the fast suite converts seresnext26d_32x4d.
    """
    for name in timm.list_models('sae*'):
        source = sae_resnet.twins(name).se
        if source:
            model = timm.create_model(name, sae_residual=False, device='meta')
            converted = convert.convert_state_dict(timm.create_model(source, device='meta').state_dict(), model)
            assert converted.keys() == model.state_dict().keys(), name


def test_sae_weights_pass_through():
    model = timm.create_model('saeresnet18')
    state_dict = model.state_dict()
    assert all(v is state_dict[k] for k, v in convert.convert_state_dict(state_dict, model).items())


@pytest.mark.parametrize('source,target,kwargs,pattern', [
    ('resnet34', 'saeresnet50', {}, r'missing.*saeresnet50 converts from timm\'s resnet50 \(plain, either gate\) '
                                    r'or timm\'s seresnet50 \(SE, with sae_residual=False\)'),
    ('seresnet50', 'saeresnet50', {}, 'converts exactly only into the plain gate.*sae_residual=False'),
    ('seresnet50', 'saeresnet50', dict(sae_residual=False, sae_cardinality=1, sae_rd_ratio=1 / 64),
     'SE reduces to 16 channels, the SaE branches have 8.*raise sae_cardinality or sae_rd_ratio'),
    ('resnet18', 'saeresnet18', dict(num_classes=10), r'mis-shaped \(fc\.bias \(1000,\) vs \(10,\)'),
])
def test_sources_that_do_not_fit(source, target, kwargs, pattern):
    weights = timm.create_model(source, device='meta').state_dict()
    with pytest.raises(convert.ConversionError, match=pattern):
        convert.convert_state_dict(weights, timm.create_model(target, device='meta', **kwargs))


def test_incomplete_se_weights_and_non_sae_models():
    weights = timm.create_model('seresnet18', device='meta').state_dict()
    del weights['layer2.1.se.fc2.bias']
    model = timm.create_model('saeresnet18', sae_residual=False, device='meta')
    with pytest.raises(convert.ConversionError, match=r'lack layer2\.1\.se\.fc2\.bias'):
        convert.convert_state_dict(weights, model)
    with pytest.raises(convert.ConversionError, match='has no SaE blocks'):
        convert.convert_state_dict(weights, timm.create_model('resnet18', device='meta'))


def test_one_step_moves_the_sae_layers():
    """Fine-tuning starts at once: the excitation gets gradients at step 1, the branches from step 2 on."""
    model = _converted(_source('resnet18'), 'saeresnet18', num_classes=1000).train()
    sae = model.layer3[1].se
    excite, branches = sae.fc_excite.weight.detach().clone(), sae.fc_branches.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, SIZE, SIZE, generator=g), torch.randint(0, 1000, (4,), generator=g)
    for step in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step == 0:
            assert not torch.equal(sae.fc_excite.weight, excite)
            assert torch.equal(sae.fc_branches.weight, branches)  # their gradient goes through W_e = 0
    assert not torch.equal(sae.fc_branches.weight, branches)


# ---------------------------------------------------------------------------------------------------
# registered tags: timm's cfgs, and timm's own Hub loading from a cache laid out like timm's repositories


@pytest.mark.parametrize('name', TAGS)
def test_tag_carries_the_source_cfg(name):
    arch, tag = name.split('.')
    cfg = get_pretrained_cfg(name)
    source = cfg.hf_hub_id.split('/', 1)[1]
    assert source.split('.')[0] == getattr(sae_resnet.twins(arch), 'se' if name in SE_SOURCED else 'plain')
    assert tag == sae_resnet.conversion_tag(source)
    source_cfg = get_pretrained_cfg(source)
    assert cfg.hf_hub_id == source_cfg.hf_hub_id == f'timm/{source_cfg.architecture}.{source_cfg.tag}'
    assert not cfg.url and not cfg.file
    for key in ('input_size', 'test_input_size', 'crop_pct', 'test_crop_pct', 'crop_mode', 'interpolation',
                'mean', 'std', 'num_classes', 'pool_size', 'license', 'label_names', 'first_conv', 'classifier'):
        assert getattr(cfg, key) == getattr(source_cfg, key), key
    source_papers = source_cfg.paper_ids
    assert cfg.paper_ids == ('arXiv:2308.13343', *([source_papers] if source_papers else []))
    assert source_cfg.tag in cfg.description and 'untrained' in cfg.description


def test_non_commercial_licenses_carry_over():
    assert get_pretrained_cfg('saeresnext101_32x8d.resnext101_32x8d_fb_wsl_ig1b_ft_in1k').license == 'cc-by-nc-4.0'
    assert get_pretrained_cfg('saeresnet50.resnet50_tv_in1k').license == 'bsd-3-clause'


@pytest.fixture(scope='module')
def timm_hub(tmp_path_factory):
    """A Hub cache holding seeded stand-ins for timm/resnet18.a1_in1k and timm/resnet26d.bt_in1k."""
    root = tmp_path_factory.mktemp('timm-hub')
    sources = {}
    for repo, arch in (('timm/resnet18.a1_in1k', 'resnet18'), ('timm/resnet26d.bt_in1k', 'resnet26d')):
        sources[arch] = _source(arch)
        folder = root / arch
        folder.mkdir()
        save_file(sources[arch].state_dict(), folder / hub.WEIGHTS_NAME)
        layout_hub_cache(folder, root / 'hub', repo)
    return root / 'hub', sources


@pytest.mark.parametrize('name,source', [('saeresnet18', 'resnet18'), ('saeresnet26d.resnet26d_bt_in1k', 'resnet26d')])
def test_pretrained_loads_the_conversion(timm_hub, name, source, caplog):
    cache, sources = timm_hub
    with offline_hub_cache(cache), caplog.at_level(logging.INFO, logger='timm_sae.sae_resnet'):
        model = timm.create_model(name, pretrained=True)
    assert _relative_error(model, sources[source]) <= EXACT_RTOL
    (line,) = [r.getMessage() for r in caplog.records if r.name == 'timm_sae.sae_resnet']
    assert f'exact conversion of plain ResNet weights timm/{source}.' in line and '(license apache-2.0)' in line
    assert 'into the residual gate x * (1 + s)' in line and 'untrained' in line


def test_pretrained_with_num_classes_in_chans_and_features(timm_hub):
    cache, sources = timm_hub
    reference = sources['resnet18']
    with offline_hub_cache(cache):
        model = timm.create_model('saeresnet18', pretrained=True, num_classes=7)
        gray = timm.create_model('saeresnet18', pretrained=True, in_chans=1)
        features = timm.create_model('saeresnet18', pretrained=True, features_only=True).eval()
        plain_gate = timm.create_model('saeresnet18', pretrained=True, sae_residual=False)
        # what timm's own test_model_load_pretrained asks of every pretrained tag (it downloads; this is offline)
        gray_five = timm.create_model('saeresnet18.resnet18_a1_in1k', pretrained=True, in_chans=1, num_classes=5)
        gray_headless = timm.create_model('saeresnet18.resnet18_a1_in1k', pretrained=True, in_chans=1, num_classes=0)
    assert model.get_classifier().out_features == 7 and gray_five.get_classifier().out_features == 5
    assert gray_headless(torch.randn(1, 1, SIZE, SIZE)).shape == (1, gray_headless.num_features)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_features = reference.forward_features(x)
        torch.testing.assert_close(model.eval().forward_features(x), assert_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features(x)[-1], assert_features, rtol=1e-5, atol=1e-5)
    # timm adapts the stem to one channel the same way for the source
    reference_gray = timm.create_model('resnet18', in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(
        state_dict=reference.state_dict()))
    assert _relative_error(gray, reference_gray.eval(), in_chans=1) <= EXACT_RTOL
    assert _relative_error(plain_gate, reference) <= EXACT_RTOL


def test_pretrained_without_weights_says_what_exists():
    with pytest.raises(RuntimeError, match='no weights of its plain or SE twin to convert; use pretrained=False'):
        timm.create_model('saeresnet50t', pretrained=True)
    with pytest.raises(RuntimeError, match=r'saeresnet18 names no weights; its tags with weights: saeresnet18\.'):
        timm.create_model('saeresnet18', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=None, url=None))


def test_twenty_architectures_load_pretrained_weights():
    """pretrained=True loads a conversion for all but the two architectures timm has no twin weights of."""
    without = [name for name in timm.list_models('sae*') if not get_pretrained_cfg(name).has_weights]
    assert without == ['saeresnet50t', 'saeresnet269d'] and len(timm.list_models('sae*')) - len(without) == 20
    for name, se in SE_PAIRS:  # the SE twin's default tag is the default where timm has no plain weights
        plain = sae_resnet.twins(name).plain
        expected = f'{plain}.{get_pretrained_cfg(plain).tag}' if plain else f'{se}.{get_pretrained_cfg(se).tag}'
        assert get_pretrained_cfg(name).tag == sae_resnet.conversion_tag(expected), name


def _se_hub(root, se: str, seed: int = 0):
    """A Hub cache holding a seeded stand-in for timm's default tag of the SE ResNet ``se``, and the stand-in."""
    source = _source(se, seed=seed)
    folder = root / se
    folder.mkdir()
    save_file(source.state_dict(), folder / hub.WEIGHTS_NAME)
    layout_hub_cache(folder, root / 'hub', get_pretrained_cfg(se).hf_hub_id)
    return root / 'hub', source


@pytest.mark.parametrize('name,source', _fast_or_slow(SE_DEFAULT_TAGS))
def test_se_tag_loads_the_exact_conversion_with_the_plain_gate(name, source, tmp_path, caplog):
    cache, reference = _se_hub(tmp_path, source)
    with offline_hub_cache(cache), caplog.at_level(logging.INFO, logger='timm_sae.sae_resnet'):
        model = timm.create_model(name, pretrained=True)
    assert not any(m.residual for m in _sae_layers(model))
    assert _relative_error(model, reference) <= EXACT_RTOL
    (line,) = [r.getMessage() for r in caplog.records if r.name == 'timm_sae.sae_resnet']
    assert f'exact conversion of SE ResNet weights {get_pretrained_cfg(source).hf_hub_id} (license ' in line
    assert 'into the plain gate x * s (sae_residual=False), the only gate SE weights convert into exactly' in line


@pytest.fixture(scope='module')
def se_hub(tmp_path_factory):
    """A Hub cache holding a seeded stand-in for timm/seresnext26d_32x4d.bt_in1k."""
    return _se_hub(tmp_path_factory.mktemp('se-hub'), 'seresnext26d_32x4d')


def test_se_tag_refuses_an_explicit_residual_gate():
    """Refused before any weights are read: no cache needed."""
    with pytest.raises(convert.ConversionError, match=(
            r'saeresnext26d_32x4d\.seresnext26d_32x4d_bt_in1k loads SE weights \(timm/seresnext26d_32x4d\.bt_in1k\), '
            r'which convert exactly only into the plain gate x \* s')):
        timm.create_model('saeresnext26d_32x4d', pretrained=True, sae_residual=True)
    pattern = r'load plain weights for the residual gate \(saeresnet50\.resnet50_'
    with pytest.raises(convert.ConversionError, match=pattern):
        timm.create_model('saeresnet50.seresnet50_a1_in1k', pretrained=True, sae_residual=True)
    # the tag picks the gate only for its own weights: without them, or with a local file, it is the default
    assert timm.create_model('saeresnext26d_32x4d', device='meta').layer1[0].se.residual


def test_se_tag_with_num_classes_in_chans_and_features(se_hub):
    cache, reference = se_hub
    name = 'saeresnext26d_32x4d'
    with offline_hub_cache(cache):
        model = timm.create_model(name, pretrained=True, num_classes=7).eval()
        gray = timm.create_model(name, pretrained=True, in_chans=1, sae_residual=False)
        features = timm.create_model(name, pretrained=True, features_only=True).eval()
    assert model.get_classifier().out_features == 7
    assert not any(m.residual for m in _sae_layers(features))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference.forward_features(x)
        torch.testing.assert_close(model.forward_features(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features(x)[-1], expected, rtol=1e-5, atol=1e-5)
    reference_gray = timm.create_model('seresnext26d_32x4d', in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(
        state_dict=reference.state_dict()))
    assert _relative_error(gray, reference_gray.eval(), in_chans=1) <= EXACT_RTOL


def test_fine_tuned_se_sourced_export_reloads_with_the_plain_gate(se_hub, tmp_path):
    """train.py --pretrained on an SE tag, then timm-sae export: the export rebuilds the plain gate."""
    cache, _ = se_hub
    with offline_hub_cache(cache):
        model = timm.create_model('saeresnext26d_32x4d', pretrained=True, num_classes=5)
    with torch.no_grad():  # a stand-in for fine-tuning: the SaE layers move off the conversion
        for block in _sae_layers(model):
            block.fc_excite.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    torch.save({'arch': 'saeresnext26d_32x4d', 'state_dict': model.state_dict(), 'epoch': 3, 'args': {
        'model': 'saeresnext26d_32x4d', 'pretrained': True, 'num_classes': 5, 'model_kwargs': {}}},
        tmp_path / 'model_best.pth.tar')
    hub.export_checkpoint(tmp_path / 'model_best.pth.tar', tmp_path / 'export')
    config = json.loads((tmp_path / 'export' / 'config.json').read_text())
    assert config['model_args']['sae_residual'] is False
    layout_hub_cache(tmp_path / 'export', cache, 'my-org/saeresnext26d_32x4d.fine_tuned')
    with offline_hub_cache(cache):
        reloaded = timm.create_model('hf-hub:my-org/saeresnext26d_32x4d.fine_tuned', pretrained=True)
    assert not reloaded.layer1[0].se.residual
    assert _relative_error(reloaded, model) <= EXACT_RTOL


@pytest.mark.parametrize('args,expected', [
    (dict(model='saeresnext26d_32x4d', pretrained=True), {'sae_residual': False}),
    (dict(model='saeresnet50.seresnet50_a1_in1k', pretrained=True), {'sae_residual': False}),
    (dict(model='saeresnet50', pretrained=True), {}),  # the default tag is plain
    (dict(model='saeresnext26d_32x4d', pretrained=False), {}),
    (dict(model='saeresnext26d_32x4d', pretrained=True, pretrained_path='se.pth'), {}),  # a file: the default gate
    (dict(model='saeresnext26d_32x4d', pretrained=True, model_kwargs=dict(sae_residual=False)), {}),
    (dict(model='seresnext26d_32x4d', pretrained=True), {}),
], ids=['se-default', 'se-tag', 'plain-default', 'untrained', 'file', 'given', 'not-sae'])
def test_train_args_gate(args, expected):
    assert checkpoint.train_args_gate(args) == expected


def test_log_line_says_non_commercial():
    """Logged by the filter timm calls; on the meta device, with the default tag's cfg (cc-by-nc-4.0 source)."""
    model = timm.create_model('saeresnext101_32x4d', device='meta')
    with pytest.MonkeyPatch.context() as patch:
        records = []
        patch.setattr(sae_resnet._logger, 'info', records.append)
        sae_resnet.pretrained_filter(timm.create_model('resnext101_32x4d', device='meta').state_dict(), model)
    assert '(license cc-by-nc-4.0: NON-COMMERCIAL use only)' in records[0]
    assert 'timm/resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k' in records[0]


def test_log_line_names_a_local_file(timm_hub, tmp_path, caplog):
    """timm loads file before hf_hub_id: the line names the file, not the tag's repository."""
    _, sources = timm_hub
    torch.save(sources['resnet18'].state_dict(), tmp_path / 'r18.pth')
    with caplog.at_level(logging.INFO, logger='timm_sae.sae_resnet'):
        model = timm.create_model('saeresnet18', pretrained=True, pretrained_cfg_overlay=dict(
            file=str(tmp_path / 'r18.pth')))
    assert _relative_error(model, sources['resnet18']) <= EXACT_RTOL
    (line,) = [r.getMessage() for r in caplog.records if r.name == 'timm_sae.sae_resnet']
    assert f'plain ResNet weights file {tmp_path / "r18.pth"} (license: that of the source' in line
    assert 'timm/' not in line


def test_se_weights_through_the_overlay(tmp_path):
    """The message's suggestion works: an SE source loaded through timm with sae_residual=False."""
    reference = _source('seresnext26t_32x4d')
    save_file(reference.state_dict(), tmp_path / 'se.safetensors')
    model = timm.create_model('saeresnext26t_32x4d', pretrained=True, sae_residual=False,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'se.safetensors')))
    assert _relative_error(model, reference) <= EXACT_RTOL
    with pytest.raises(convert.ConversionError, match='plain gate'):
        timm.create_model('saeresnext26t_32x4d', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'se.safetensors')))


# ---------------------------------------------------------------------------------------------------
# timm-sae convert


def test_cli_converts_a_timm_name(timm_hub, tmp_path):
    cache, sources = timm_hub
    with offline_hub_cache(cache):
        assert main(['convert', 'resnet18.a1_in1k', str(tmp_path / 'out')]) == 0
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == 'saeresnet18' and config['model_args']['sae_residual'] is True
    cfg = config['pretrained_cfg']
    assert cfg['license'] == 'apache-2.0' and cfg['paper_ids'] == ['arXiv:2308.13343', 'arXiv:2110.00476']
    assert cfg['crop_pct'] == 0.95 and 'resnet18.a1_in1k' in cfg['description']
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert 'base_model: timm/resnet18.a1_in1k' in card and 'not trained yet' in card.replace('NOT', 'not')
    loaded = timm.create_model('local-dir:' + str(tmp_path / 'out'), pretrained=True)
    assert _relative_error(loaded, sources['resnet18']) <= EXACT_RTOL


def test_cli_converts_an_se_checkpoint(tmp_path, capsys):
    reference = _source('seresnext26d_32x4d', num_classes=5)
    torch.save({'arch': 'seresnext26d_32x4d', 'state_dict': reference.state_dict(), 'epoch': 1,
                'args': {'model': 'seresnext26d_32x4d', 'num_classes': 5}}, tmp_path / 'last.pth.tar')
    assert main(['convert', str(tmp_path / 'last.pth.tar'), str(tmp_path / 'out')]) == 0
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == 'saeresnext26d_32x4d' and config['num_classes'] == 5
    assert config['model_args']['sae_residual'] is False
    loaded = timm.create_model('local-dir:' + str(tmp_path / 'out'), pretrained=True)
    assert _relative_error(loaded, reference) <= EXACT_RTOL

    # a state dict without its architecture needs --model; the residual gate is refused for SE
    torch.save(reference.state_dict(), tmp_path / 'plain.pth')
    assert main(['convert', str(tmp_path / 'plain.pth'), str(tmp_path / 'out2')]) == 1
    assert 'give it with --model' in capsys.readouterr().err
    assert main(['convert', str(tmp_path / 'plain.pth'), str(tmp_path / 'out2'), '--model', 'seresnext26d_32x4d',
                 '--model-kwargs', 'sae_residual=True']) == 1
    err = capsys.readouterr().err
    assert err.startswith('timm-sae convert: error:') and 'plain gate' in err and err.count('\n') == 1
    assert not (tmp_path / 'out2').exists()


@pytest.mark.parametrize('source,pattern', [
    ('resnet99.nothing', 'neither a file nor a timm model'),
    ('missing.pth', 'no such file'),
    ('convnext_tiny', 'convnext_tiny has no SaE twin'),  # refused before any download
    ('vit_base_patch16_224.augreg_in21k', 'vit_base_patch16_224 has no SaE twin'),
    ('saeresnet50', 'saeresnet50 is an SaE model already'),
    ('resnet50.nosuchtag', "timm has no tag 'nosuchtag' of resnet50; its tags are a1_in1k"),
    ('resnet50t', 'timm has no pretrained weights of resnet50t'),
    ('resnet18.a1_in1k', 'the Hugging Face Hub cannot be reached'),  # the one case for network advice
])
def test_cli_convert_errors(source, pattern, tmp_path, capsys):
    with offline_hub_cache(tmp_path / 'empty-cache'):
        assert main(['convert', str(tmp_path / source) if source.endswith('.pth') else source,
                     str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert pattern in err and err.count('\n') == 1 and not (tmp_path / 'out').exists()
    assert ('check the network' in err) == (source == 'resnet18.a1_in1k')


def test_convert_refuses_nonfinite_weights(tmp_path, capsys):
    state_dict = timm.create_model('resnet18', num_classes=3).state_dict()
    state_dict['layer1.0.bn2.running_var'][:2] = float('nan')
    torch.save(state_dict, tmp_path / 'diverged.pth')
    assert main(['convert', str(tmp_path / 'diverged.pth'), str(tmp_path / 'out'), '--model', 'resnet18']) == 1
    err = capsys.readouterr().err
    assert '1 of 122 tensors hold NaN or inf: layer1.0.bn2.running_var (2 NaN of 64)' in err and err.count('\n') == 1
    assert not (tmp_path / 'out').exists()


def test_family_table_shows_default_license_and_tags_by_source(monkeypatch):
    """``timm-sae list``: the default tag's license (non-commercial said so), the tags of plain + SE + SaE weights
    and the untrained ones."""
    monkeypatch.setattr(timm, 'list_models', lambda *args, **kwargs: [
        'saeresnet50', 'saeresnext26d_32x4d', 'saeresnext101_32x4d', 'saeresnet50t'])
    rows = {line.split(' | ')[0][2:]: line for line in family_table(img_size=32)[2:]}
    assert rows['saeresnet50'].endswith('| resnet50_a1_in1k | apache-2.0 | 19 + 4 + 0 | 0 |')
    assert rows['saeresnext26d_32x4d'].endswith('| seresnext26d_32x4d_bt_in1k | apache-2.0 | 0 + 1 + 0 | 0 |')
    assert rows['saeresnext101_32x4d'].endswith(
        '| resnext101_32x4d_fb_ssl_yfcc100m_ft_in1k | cc-by-nc-4.0 (non-commercial) | 3 + 1 + 0 | 0 |')
    assert rows['saeresnet50t'].endswith('| untrained | apache-2.0 | 0 + 0 + 0 | 1 |')
