"""``sae_stages``: SaE in the blocks of some stages only, timm's plain blocks elsewhere (the paper's placement study).

Checked through the paths a user takes: the entrypoint, exact conversion of plain weights (directly and through
``pretrained=True``), an export reloaded by timm's own ``local-dir:`` loader, ``features_only`` and
torch.export. train.py, the Hub cache and ONNX run with a placement in tests/test_timm_scripts.py.
"""
import json
from typing import Tuple

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck

import timm_sae  # noqa: F401
from conftest import randomise_batchnorm
from timm_sae._testing import EXACT_RTOL, relative_error
from timm_sae.blocks import SaEBasicBlock, SaEBottleneck
from timm_sae.cli import main
from timm_sae.convert import ConversionError, convert_state_dict
from timm_sae.hub import export_checkpoint

pytestmark = pytest.mark.usefixtures('single_thread')

PLACEMENTS = [(1, 2), (3, 4), (4,), (2, 4)]


def _stages_with_sae(model: torch.nn.Module) -> Tuple[int, ...]:
    return tuple(i for i in range(1, 5) if any(b.se is not None for b in getattr(model, f'layer{i}')))


@pytest.fixture(scope='module')
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(timm.create_model('resnet18'))


def _relative_error(model: torch.nn.Module, reference: torch.nn.Module, size: int = 32) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        return relative_error(model(x), expected)


@pytest.mark.parametrize('name, sae_block, plain_block', [
    ('saeresnet18', SaEBasicBlock, BasicBlock), ('saeresnet26', SaEBottleneck, Bottleneck)])
def test_other_stages_are_timms_plain_blocks_with_the_plain_twins_keys(name, sae_block, plain_block):
    model = timm.create_model(name, sae_stages=(3, 4), device='meta')
    plain = timm.create_model(name.replace('sae', '', 1), device='meta')
    assert _stages_with_sae(model) == (3, 4)
    for stage in (1, 2):
        assert all(type(b) is plain_block and b.se is None for b in getattr(model, f'layer{stage}'))
    assert all(type(b) is sae_block for stage in (3, 4) for b in getattr(model, f'layer{stage}'))
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(('layer3.', 'layer4.')) and '.se.' in k for k in extra)
    assert set(plain.state_dict()) <= set(model.state_dict())


def test_default_is_every_stage():
    assert _stages_with_sae(timm.create_model('saeresnet18', device='meta')) == (1, 2, 3, 4)
    assert _stages_with_sae(timm.create_model('saeresnet18', sae_stages=[4, 1, 4], device='meta')) == (1, 4)


@pytest.mark.parametrize('stages, match', [
    ((), 'sae_stages is empty'), ((0,), 'holds 0, not a stage number'), ((5,), 'holds 5'),
    ((3.0,), 'holds 3.0'), ((True,), 'holds True'), ('34', "got '34'"), (4, 'got 4')])
def test_bad_stages_get_a_clear_error(stages, match):
    with pytest.raises(ValueError, match=match) as error:
        timm.create_model('saeresnet18', sae_stages=stages, device='meta')
    assert 'from 1 to 4' in str(error.value)


@pytest.mark.parametrize('stages', PLACEMENTS)
def test_plain_weights_convert_exactly_into_any_placement(stages, resnet18):
    model = timm.create_model('saeresnet18', sae_stages=stages).eval()
    model.load_state_dict(convert_state_dict(resnet18.state_dict(), model))
    assert _relative_error(model, resnet18) <= EXACT_RTOL


def test_pretrained_loading_converts_into_a_placement_of_a_bottleneck_model():
    """timm's pretrained path (the filter the conversion tags use), with the narrow squeeze in eval."""
    torch.manual_seed(0)
    plain = randomise_batchnorm(timm.create_model('resnet26'))
    model = timm.create_model('saeresnet26', pretrained=True, sae_stages=(2, 3),
                              pretrained_cfg_overlay=dict(state_dict=plain.state_dict())).eval()
    assert _stages_with_sae(model) == (2, 3)
    assert _relative_error(model, plain) <= EXACT_RTOL


def test_se_weights_do_not_convert_into_a_placement():
    se = timm.create_model('seresnet18', device='meta')
    model = timm.create_model('saeresnet18', sae_stages=(3, 4), sae_residual=False, device='meta')
    with pytest.raises(ConversionError, match=r'SE layers in layer1\.0.*convert exactly only into SaE in every stage'):
        convert_state_dict(se.state_dict(), model)


def test_export_records_the_placement_and_timm_rebuilds_it(tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(timm.create_model('saeresnet18', sae_stages=(2, 4), num_classes=5))
    torch.save(model.state_dict(), tmp_path / 'weights.pth')
    folder = export_checkpoint(tmp_path / 'weights.pth', tmp_path / 'export', model_name='saeresnet18',
                               model_kwargs={'sae_stages': (2, 4)})
    assert json.loads((folder / 'config.json').read_text())['model_args']['sae_stages'] == [2, 4]
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert _stages_with_sae(reloaded) == (2, 4)
    assert _relative_error(reloaded, model) == 0


def test_features_only_and_torch_export():
    torch.manual_seed(0)
    model = timm.create_model('saeresnet18', sae_stages=(3,), features_only=True).eval()
    x = torch.randn(1, 3, 32, 32)
    reference = timm.create_model('resnet18', features_only=True).eval()
    assert [f.shape for f in model(x)] == [f.shape for f in reference(x)]
    classifier = randomise_batchnorm(timm.create_model('saeresnet18', sae_stages=(3, 4), num_classes=3))
    exported = torch.export.export(classifier, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), classifier(x))


def test_convert_command_takes_a_placement_and_refuses_a_bad_one(tmp_path, resnet18, capsys):
    torch.save(resnet18.state_dict(), tmp_path / 'resnet18.pth')
    convert = ['convert', str(tmp_path / 'resnet18.pth'), '--model', 'resnet18', '--model-kwargs']
    assert main([*convert[:2], str(tmp_path / 'bad'), *convert[2:], 'sae_stages=()']) == 1
    assert 'sae_stages is empty' in capsys.readouterr().err and not (tmp_path / 'bad').exists()
    assert main([*convert[:2], str(tmp_path / 'out'), *convert[2:], 'sae_stages=(3,4)']) == 0
    converted = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    assert _stages_with_sae(converted) == (3, 4)
    assert _relative_error(converted, resnet18) <= EXACT_RTOL
