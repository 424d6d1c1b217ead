"""Exports in the real transformers: its timm wrapper (AutoModelForImageClassification) and the
image-classification pipeline, after ``import timm_sae``; and timm's own ``hf-hub:`` overrides of the same folder.

transformers builds the model with ``timm.create_model(architecture, num_classes=..., **model_args)``: the
export's ``model_args`` must not hold ``num_classes`` (it would be given twice), and must hold ``in_chans``
(transformers does not read it from the pretrained cfg).
"""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import timm_sae  # noqa: F401  (registers the SaE family, which transformers' wrapper builds through timm)
from timm_sae import hub
from timm_sae._testing import layout_hub_cache, offline_hub_cache

transformers = pytest.importorskip('transformers', reason='transformers is in the test extra: pip install -e .[test]')

LABELS = ['cat', 'dog', 'bird']
# (architecture, SaE arguments, input channels): a basic-block 1-channel model and a plain-gate ResNeXt
EXPORTS = [
    ('saeresnet18', dict(sae_cardinality=2), 1),
    ('saeresnext26t_32x4d', dict(sae_residual=False), 3),
]


@pytest.fixture(scope='module', params=EXPORTS, ids=[e[0] for e in EXPORTS])
def export(request, tmp_path_factory):
    """(timm model, export folder, SaE arguments, input channels) of a seeded model with 3 labelled classes."""
    name, sae_args, in_chans = request.param
    tmp = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=len(LABELS), in_chans=in_chans, **sae_args).eval()
    save_file(model.state_dict(), tmp / 'weights.safetensors')
    (tmp / 'labels.txt').write_text('\n'.join(LABELS))
    folder = hub.export_checkpoint(
        tmp / 'weights.safetensors', tmp / 'export', model_name=name, model_kwargs=sae_args,
        label_names=tmp / 'labels.txt')
    return model, folder, sae_args, in_chans


def test_config_keeps_only_what_rebuilding_needs(export):
    _, folder, sae_args, in_chans = export
    config = json.loads((folder / 'config.json').read_text())
    expected = dict(hub.sae_model_args(sae_args), in_chans=in_chans)
    # as JSON holds them: sae_stages (a tuple) is a list there
    assert config['model_args'] == json.loads(json.dumps(expected)) and config['num_classes'] == len(LABELS)


def test_auto_model_equals_timm(export):
    model, folder, _, in_chans = export
    wrapped = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert type(wrapped).__name__ == 'TimmWrapperForImageClassification'
    assert [wrapped.config.id2label[i] for i in range(len(LABELS))] == LABELS
    x = torch.randn(2, in_chans, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        # the same weights and ops in another module instance: equal up to the order oneDNN sums in, which can
        # change with the tensors' memory alignment and the threads available
        torch.testing.assert_close(
            wrapped(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_pipeline_equals_timm_transforms(export):
    model, folder, _, in_chans = export
    if in_chans != 3:
        pytest.skip("transformers' pipeline converts every image to RGB: it serves 3-channel models")
    classify = transformers.pipeline('image-classification', model=str(folder))
    image = Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype('uint8'))
    predictions = classify(image, top_k=len(LABELS))
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        probabilities = model(transform(image).unsqueeze(0)).softmax(-1)[0]
    assert {p['label'] for p in predictions} == set(LABELS)
    for p in predictions:
        assert p['score'] == pytest.approx(probabilities[LABELS.index(p['label'])].item(), abs=1e-6)


def test_timm_hub_loading_takes_overrides(export, tmp_path):
    model, folder, _, in_chans = export
    layout_hub_cache(folder, tmp_path / 'hub', 'org/sae')
    with offline_hub_cache(tmp_path / 'hub'):
        same = timm.create_model('hf-hub:org/sae', pretrained=True).eval()
        other = timm.create_model('hf-hub:org/sae', pretrained=True, num_classes=7, in_chans=2)
    x = torch.randn(2, in_chans, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    assert other.get_classifier().out_features == 7
    assert other.get_submodule(other.pretrained_cfg['first_conv']).in_channels == 2
