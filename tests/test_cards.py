"""Model cards: rendered from results files, figures equal to them, one card folder a published tag."""
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
import timm

import timm_sae  # noqa: F401
from timm_sae import cards, hub
from timm_sae.cli import main
from timm_sae.sae_resnet import HUB_ORG

HUB_CARDS = Path(__file__).resolve().parents[1] / 'hub_cards'


def _sample_results(**overrides):
    results = {
        'model': 'saeresnet18',
        'tag': 'fmnist',
        'dataset': {'id': 'zalando-datasets/fashion_mnist', 'name': 'Fashion-MNIST', 'split': 'test'},
        'metrics': {'top1': 91.37, 'top5': 99.81, 'loss': 0.2468},
        'params': 11178250,
        'gmacs': 0.029,
        'img_size': 28,
        'recipe': {'epochs': 10, 'optimizer': 'adamw', 'lr': 0.001, 'batch_size': 128},
        'command': 'python -m timm_sae.run train.py --model saeresnet18 --num-classes 10 --in-chans 1',
        'versions': {'timm': '1.0.31', 'torch': '2.14.1', 'timm_sae': '0.1.0'},
        'hardware': '2-core CPU',
        'in_chans': 1,
        'num_classes': 10,
    }
    results.update(overrides)
    return results


def _card_folder(parent: Path, results: dict) -> Path:
    folder = parent / f"{results['model']}.{results['tag']}"
    folder.mkdir(parents=True)
    (folder / 'results.json').write_text(json.dumps(results, indent=2))
    return folder


def _split_card(text: str):
    """Front matter (parsed) and body of a card."""
    _, front, body = text.split('---\n', 2)
    return yaml.safe_load(front), body


def _section(body: str, title: str) -> str:
    return body.split(f'\n## {title}\n', 1)[1].split('\n## ', 1)[0]


def test_card_figures_equal_results(tmp_path):
    results = _sample_results()
    card = cards.write_card(_card_folder(tmp_path, results)).read_text()
    meta, body = _split_card(card)

    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert {'timm', 'timm-sae', 'image-classification'} <= set(meta['tags'])
    assert meta['datasets'] == ['zalando-datasets/fashion_mnist']
    (entry,) = meta['model-index']
    assert entry['name'] == 'saeresnet18.fmnist'
    (result,) = entry['results']
    assert result['dataset'] == {'name': 'Fashion-MNIST', 'type': 'zalando-datasets/fashion_mnist', 'split': 'test'}
    assert [m['value'] for m in result['metrics']] == list(results['metrics'].values())

    # every figure of the Results section is a metric of the results file, each metric is there
    figures = re.findall(r'\| ([\d.]+) \|', _section(body, 'Results'))
    assert figures == [str(v) for v in results['metrics'].values()]
    details = _section(body, 'Model Details')
    assert f"({results['params']:,} parameters)" in details and f"GMACs: {results['gmacs']}" in details
    assert 'Image size: 28 x 28, 1 channel' in details and 'Classes: 10' in details
    assert all(f'- {k}: {v}' in details for k, v in results['recipe'].items())
    assert 'arXiv:2308.13343' in details.replace('https://arxiv.org/abs/2308.13343', 'arXiv:2308.13343')

    usage = _section(body, 'Model Usage')
    repo_id = f'{HUB_ORG}/saeresnet18.fmnist'
    assert 'import timm_sae' in usage and f"create_model('hf-hub:{repo_id}', pretrained=True)" in usage
    assert 'features_only=True' in usage and 'num_classes=0' in usage and ".convert('L')" in usage
    assert results['command'] in body
    assert f'timm-sae push exports/saeresnet18.fmnist --repo-id {repo_id}' in _section(body, 'Publishing')
    citation = _section(body, 'Citation')
    assert 'Squeeze aggregated excitation network' in citation and 'Narayanan, Mahendran' in citation
    assert 'arXiv:2308.13343' in citation and '2023' in citation


def test_card_repo_id_override(tmp_path):
    card = cards.render_card(_sample_results(repo_id='someone/sae18'))
    assert "create_model('hf-hub:someone/sae18'" in card and '--repo-id someone/sae18' in card


@pytest.mark.parametrize('change,pattern', [
    (dict(metrics=None), 'metrics must be an object'),
    (dict(metrics={}), 'metrics must map'),
    (dict(metrics={'top1': '91'}), 'metrics must map'),
    (dict(params=11.2), 'params must be an integer'),
    (dict(dataset={'id': 'x'}), 'dataset must be'),
    (dict(speed=3), r"unknown keys \['speed'\]"),
    (dict(command=None), 'command must be a string'),
])
def test_results_schema_errors(change, pattern):
    with pytest.raises(cards.CardError, match=pattern):
        cards.check_results(_sample_results(**change))


def test_results_missing_key_and_bad_json(tmp_path):
    results = _sample_results()
    del results['hardware']
    with pytest.raises(cards.CardError, match=r"missing keys \['hardware'\]"):
        cards.check_results(results)
    (tmp_path / 'results.json').write_text('{"model": ')
    with pytest.raises(cards.CardError, match='is not JSON'):
        cards.load_results(tmp_path / 'results.json')


def test_card_folder_must_be_named_after_its_results(tmp_path):
    folder = tmp_path / 'saeresnet18.other'
    folder.mkdir()
    (folder / 'results.json').write_text(json.dumps(_sample_results()))
    with pytest.raises(cards.CardError, match='name the folder saeresnet18.fmnist'):
        cards.write_card(folder)


def test_check_cards_on_a_fake_registry(tmp_path):
    """The checker finds a published tag without a card, a wrong hf_hub_id and a stale card."""
    name = 'saeresnet18.fmnist'
    cfgs = {'saeresnet18.untrained': {}, name: {'hf_hub_id': f'{HUB_ORG}/{name}'}}
    problems = cards.check_cards(cfgs, tmp_path)
    assert len(problems) == 1 and 'no ' in problems[0] and name in problems[0]

    folder = _card_folder(tmp_path, _sample_results())
    problems = cards.check_cards(cfgs, tmp_path)
    assert len(problems) == 1 and 'not the render' in problems[0]  # README.md not rendered yet
    cards.write_card(folder)
    assert cards.check_cards(cfgs, tmp_path) == []

    assert 'hf_hub_id' in cards.check_cards({name: {'hf_hub_id': f'timm/{name}'}}, tmp_path)[0]
    (folder / 'README.md').write_text((folder / 'README.md').read_text().replace('91.37', '93.0'))
    assert 'not the render' in cards.check_cards(cfgs, tmp_path)[0]


def test_registered_tags_have_cards():
    cfgs = cards.registered_cfgs()
    assert 'saeresnet50.untrained' in cfgs
    assert cards.check_cards(cfgs, HUB_CARDS) == []


def test_committed_cards_are_fresh_renders():
    for folder in sorted(p for p in HUB_CARDS.iterdir() if p.is_dir()):
        expected = cards.render_card(cards.load_results(folder / 'results.json'))
        assert (folder / 'README.md').read_text(encoding='utf-8') == expected, f'run: timm-sae card {folder}'


def test_cli_card(tmp_path, capsys):
    folder = _card_folder(tmp_path, _sample_results())
    assert main(['card', str(folder)]) == 0
    assert (folder / 'README.md').read_text() == cards.render_card(_sample_results())
    assert main(['card', str(tmp_path / 'missing')]) == 1
    assert 'cannot read' in capsys.readouterr().err


def test_export_writes_the_results_card(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('saeresnet18', num_classes=10, in_chans=1).eval()
    checkpoint = tmp_path / 'model.pth'
    torch.save(model.state_dict(), checkpoint)
    params = sum(p.numel() for p in model.parameters())
    results = _sample_results(params=params)
    folder = _card_folder(tmp_path / 'hub_cards', results)
    cards.write_card(folder)
    out = hub.export_checkpoint(
        checkpoint, tmp_path / 'out', model_name='saeresnet18', results=folder / 'results.json')
    assert (out / 'README.md').read_text() == (folder / 'README.md').read_text()
    assert json.loads((out / 'config.json').read_text())['pretrained_cfg']['tag'] == 'fmnist'

    (folder / 'results.json').write_text(json.dumps(_sample_results(params=params + 1)))
    with pytest.raises(cards.CardError, match='give the results file of these weights'):
        hub.export_checkpoint(checkpoint, tmp_path / 'out2', model_name='saeresnet18', results=folder / 'results.json')
    assert not (tmp_path / 'out2').exists()
