"""Model cards: typed results, rendered through huggingface_hub's card API, figures equal to the results file."""
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import StrictDataclassError
from timm.models import get_pretrained_cfg

import timm_sae  # noqa: F401
from timm_sae import cards, convert, hub
from timm_sae.cli import main
from timm_sae.family import tag_weights
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
    """Front matter and body of a card, as huggingface_hub's ModelCard parses them."""
    card = ModelCard(text)
    return card.data.to_dict(), card.text


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
    assert 'https://arxiv.org/abs/2308.13343' in details

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
    card = cards.render_card(cards.check_results(_sample_results(repo_id='someone/sae18')))
    assert "create_model('hf-hub:someone/sae18'" in card and '--repo-id someone/sae18' in card


# (change to a valid results file, what the message names): the field as our CardError names it, or the whole
# message where the check is ours (a validator of timm_sae.cards), not the wording of huggingface_hub's type checks
SCHEMA_ERRORS = {
    'metrics-none': (dict(metrics=None), "'metrics'"),
    'metrics-empty': (dict(metrics={}), r'metrics must name at least one metric, e\.g\. \{"top1": 91\.5\}'),
    'metric-str': (dict(metrics={'top1': '91'}), r"'metrics\['top1'\]'"),
    'metric-bool': (dict(metrics={'top1': True}), r"'metrics\['top1'\]'"),
    'params-float': (dict(params=11.2), "'params'"),
    'params-bool': (dict(params=True), "'params'"),
    'gmacs-str': (dict(gmacs='0.03'), "'gmacs'"),
    'img-size-one': (dict(img_size=[32]), r'img_size must be an integer or \[H, W\], got \[32\]'),
    'img-size-tuple': (dict(img_size=(28, 28)), "'img_size'"),
    'dataset-incomplete': (dict(dataset={'id': 'x'}), "dataset: .*'name'.*'split'"),
    'dataset-split-int': (dict(dataset={'id': 'x', 'name': 'y', 'split': 3}), "dataset: .*'split'"),
    'dataset-str': (dict(dataset='Fashion-MNIST'), "'dataset'"),
    'versions-float': (dict(versions={'torch': 2.14}), r"'versions\['torch'\]'"),
    'recipe-list': (dict(recipe=[1]), "'recipe'"),
    'unknown-key': (dict(speed=3), "'speed'"),
    'command-none': (dict(command=None), "'command'"),
    'license-int': (dict(license=2), "'license'"),
}


@pytest.mark.parametrize('change, named', SCHEMA_ERRORS.values(), ids=SCHEMA_ERRORS.keys())
def test_results_schema_errors(change, named):
    """One line that says which file, which field, and where the schema is."""
    pattern = rf'^hub_cards/x/results\.json: .*{named}.*; the schema is timm_sae\.cards\.(Results|Dataset)$'
    with pytest.raises(cards.CardError, match=pattern) as error:
        cards.check_results(_sample_results(**change), 'hub_cards/x/results.json')
    assert '\n' not in str(error.value)


def test_results_are_typed():
    """A results file parses into strict records: nested dataset, defaults filled in, every assignment checked."""
    results = cards.check_results(_sample_results(img_size=[28, 32], repo_id=None))
    assert isinstance(results, cards.Results) and isinstance(results.dataset, cards.Dataset)
    assert results.dataset.split == 'test' and results.img_size == [28, 32] and results.name == 'saeresnet18.fmnist'
    assert results.license is None and results.model_args == {} and results.repo_id is None
    assert results.metrics == {'top1': 91.37, 'top5': 99.81, 'loss': 0.2468}
    with pytest.raises(StrictDataclassError, match="'tag'"):
        results.tag = 3
    # the same checks when a record is built in Python
    with pytest.raises(StrictDataclassError, match="'kind'"):
        cards.Source(name='seresnet50.ra2_in1k', kind='SE')
    with pytest.raises(StrictDataclassError, match='paper_ids must be arXiv ids'):
        cards.Source(name='resnet50.a1_in1k', kind='plain', paper_ids=['doi:10.1000/1'])
    with pytest.raises(StrictDataclassError, match="'gmacs'"):
        cards.ExportInfo(model='saeresnet18', params=1, gmacs=None, img_size=224)


def test_results_missing_key_and_bad_json(tmp_path):
    results = _sample_results()
    del results['hardware']
    with pytest.raises(cards.CardError, match=r"^results: .*'hardware'.*; the schema is timm_sae\.cards\.Results$"):
        cards.check_results(results)
    with pytest.raises(cards.CardError, match='results must be a JSON object, got list'):
        cards.check_results([results])
    (tmp_path / 'results.json').write_text('{"model": ')
    with pytest.raises(cards.CardError, match='is not JSON'):
        cards.load_results(tmp_path / 'results.json')


def test_results_table_of_hub_cards_readme_is_the_schema():
    """hub_cards/README.md documents every key of cards.Results, and marks exactly the optional ones."""
    rows = re.findall(r'^\| `(\w+)` \| ([^|]+) \|', (HUB_CARDS / 'README.md').read_text(), re.MULTILINE)
    documented = {key: 'optional' in kind for key, kind in rows}
    schema = {
        f.name: f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cards.Results)}
    assert documented == schema


def test_card_round_trips_through_huggingface_hub(tmp_path):
    """ModelCard reads back the rendered metadata: license, datasets, model-index values equal results.json."""
    results = _sample_results(license='cc-by-4.0')
    text = cards.write_card(_card_folder(tmp_path, results)).read_text()
    card = ModelCard.load(tmp_path / 'saeresnet18.fmnist' / 'README.md')
    assert str(card) == text  # the render is what huggingface_hub writes back
    data = card.data
    assert data.license == 'cc-by-4.0' and data.library_name == 'timm' and data.base_model is None
    assert data.datasets == ['zalando-datasets/fashion_mnist'] and data.model_name == 'saeresnet18.fmnist'
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_split) for r in data.eval_results] == [
        ('accuracy', 91.37, 'zalando-datasets/fashion_mnist', 'test'),
        ('top_5_accuracy', 99.81, 'zalando-datasets/fashion_mnist', 'test'),
        ('loss', 0.2468, 'zalando-datasets/fashion_mnist', 'test')]


def test_committed_card_metadata_equals_its_results_file():
    for folder in sorted(p for p in HUB_CARDS.iterdir() if p.is_dir()):
        raw = json.loads((folder / 'results.json').read_text())
        data = ModelCard.load(folder / 'README.md').data
        assert data.license == raw.get('license', 'apache-2.0') and data.datasets == [raw['dataset']['id']]
        assert {r.metric_name: r.metric_value for r in data.eval_results} == {
            cards.METRIC_TYPES[k][1]: v for k, v in raw['metrics'].items()}
        assert {r.dataset_name for r in data.eval_results} == {raw['dataset']['name']}


def _timm_source(name: str, kind: str) -> cards.Source:
    return cards.Source.from_cfg(name, kind, get_pretrained_cfg(name).to_dict())


def _export_info(model='saeresnet50', source=None, **model_args):
    return cards.ExportInfo(model=model, params=25_557_032, gmacs=4.1, img_size=[224, 224], in_chans=3,
                            num_classes=1000, model_args=model_args, source=source)


def _papers(details: str):
    return re.findall(r'https://arxiv\.org/abs/([\d.]+)', details)


def test_conversion_card_of_a_plain_source():
    """resnet50.a1_in1k -> saeresnet50: linked source, base_model, its license and paper, no results claimed."""
    source = _timm_source('resnet50.a1_in1k', 'plain')
    assert source == cards.Source(
        name='resnet50.a1_in1k', kind='plain', hf_hub_id='timm/resnet50.a1_in1k', license='apache-2.0',
        paper_ids=['arXiv:2110.00476'])
    text = cards.render_card(_export_info(source=source), name='saeresnet50.a1', folder='exports/saeresnet50.a1')
    meta, body = _split_card(text)
    assert meta['base_model'] == 'timm/resnet50.a1_in1k' and meta['license'] == 'apache-2.0'
    assert 'model-index' not in meta and 'datasets' not in meta
    assert {'timm', 'timm-sae', 'image-classification'} <= set(meta['tags'])
    description = body.split('\n## ', 1)[0]
    link = '[`resnet50.a1_in1k`](https://huggingface.co/timm/resnet50.a1_in1k)'
    assert f'exact conversion of the plain ResNet weights {link}' in description and 'NOT trained yet' in description
    assert 'excitation weight 0 and bias 0' in description and 'gate 1 + s = 3/2' in description
    assert f'--device-modules timm_sae --model hf-hub:{HUB_ORG}/saeresnet50.a1 --pretrained' in description
    details = _section(body, 'Model Details')
    assert _papers(details) == ['2308.13343', '2110.00476']
    assert 'Source weights:** [`resnet50.a1_in1k`]' in details and 'License:** apache-2.0' in details
    result_text = _section(body, 'Results')
    assert 'No results recorded' in result_text and '|' not in result_text and 'validate.py' in result_text
    # the plain gate divides out 1/2 instead
    _, body = _split_card(cards.render_card(_export_info(source=source, sae_residual=False)))
    assert 'gate s = 1/2' in body and '3/2' not in body


def test_conversion_card_carries_a_non_commercial_license():
    source = _timm_source('resnet50.fb_swsl_ig1b_ft_in1k', 'plain')
    meta, body = _split_card(cards.render_card(_export_info(source=source)))
    assert meta['license'] == 'cc-by-nc-4.0' and meta['base_model'] == 'timm/resnet50.fb_swsl_ig1b_ft_in1k'
    assert 'License:** cc-by-nc-4.0, the source\'s' in _section(body, 'Model Details')


def test_conversion_card_of_an_se_source():
    """seresnext26d_32x4d.bt_in1k -> saeresnext26d_32x4d needs the plain gate; the card says how SE fills the layer."""
    source = _timm_source('seresnext26d_32x4d.bt_in1k', 'se')
    assert source.paper_ids == [] and source.license == 'apache-2.0'
    info = _export_info('saeresnext26d_32x4d', source, sae_residual=False)
    meta, body = _split_card(cards.render_card(info))
    assert meta['base_model'] == 'timm/seresnext26d_32x4d.bt_in1k'
    description = body.split('\n## ', 1)[0]
    assert 'SE-ResNet weights' in description and "SE's plain gate x * s (`sae_residual=False`)" in description
    assert 'first r rows of the branch matrix' in description and 'other columns are 0' in description
    assert _papers(_section(body, 'Model Details')) == ['2308.13343']
    with pytest.raises(StrictDataclassError, match='converts exactly only into the plain gate'):
        _export_info('saeresnext26d_32x4d', source)


def test_conversion_card_of_a_checkpoint_without_license():
    source = cards.Source(name='resnet18_run3.pth.tar', kind='plain', paper_ids=['1512.03385'])
    meta, body = _split_card(cards.render_card(_export_info('saeresnet18', source)))
    assert meta['license'] == 'other' and 'base_model' not in meta
    assert 'conversion of the plain ResNet weights `resnet18_run3.pth.tar`.' in body
    details = _section(body, 'Model Details')
    assert 'License:** not recorded for `resnet18_run3.pth.tar`' in details and 'check them before use' in details
    assert _papers(details) == ['2308.13343', '1512.03385']


@pytest.mark.parametrize('source_arch,kwargs', [('resnet18', {}), ('resnet18', dict(sae_residual=False)),
                                                ('seresnet18', dict(sae_residual=False))])
def test_conversion_card_states_what_convert_does(source_arch, kwargs, single_thread):
    """The card's claims hold for timm_sae.convert: excitation weight and bias 0 (plain source), SE's
    reduction and expansion in the first rows / columns and the other columns 0 (SE source), same logits."""
    torch.manual_seed(0)
    source = timm.create_model(source_arch, num_classes=10).eval()
    for module in source.modules():  # BatchNorm statistics other than the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    sae = timm.create_model('saeresnet18', num_classes=10, **kwargs).eval()
    sae.load_state_dict(convert.convert_state_dict(source.state_dict(), sae))
    layer = sae.layer1[0].se
    if source_arch == 'resnet18':
        assert not layer.fc_excite.weight.any() and not layer.fc_excite.bias.any()
    else:
        se = source.layer1[0].se
        reduced = se.fc1.weight.shape[0]
        assert torch.equal(layer.fc_branches.weight[:reduced], se.fc1.weight.flatten(1))
        assert torch.equal(layer.fc_excite.weight[:, :reduced], se.fc2.weight.flatten(1))
        assert not layer.fc_excite.weight[:, reduced:].any()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), source(x), rtol=1e-5, atol=1e-5)


def test_card_folder_must_be_named_after_its_results(tmp_path):
    folder = tmp_path / 'saeresnet18.other'
    folder.mkdir()
    (folder / 'results.json').write_text(json.dumps(_sample_results()))
    with pytest.raises(cards.CardError, match='name the folder saeresnet18.fmnist'):
        cards.write_card(folder)


def registered_cfgs() -> Dict[str, Dict[str, Any]]:
    """The pretrained cfgs of every registered SaE ``<arch>.<tag>``."""
    names = timm.list_models(module='sae_resnet', include_tags=True)
    return {name: get_pretrained_cfg(name).to_dict() for name in names}


def check_cards(cfgs: Mapping[str, Mapping[str, Any]], cards_dir: Path) -> List[str]:
    """Problems with the cards of the tags in ``cfgs`` (``registered_cfgs()``) and the folders in ``cards_dir``.

    Every tag of SaE weights of its own (``tag_weights``: not untrained, not an exact conversion of timm's weights)
    needs ``hf_hub_id`` ``<HUB_ORG>/<arch>.<tag>`` and a card folder; every card folder a valid results file, the
    right name and a README.md equal to a fresh render.
    """
    problems = []
    for name, cfg in sorted(cfgs.items()):
        if tag_weights(name, cfg) != 'sae':
            continue
        if cfg.get('hf_hub_id') != f'{HUB_ORG}/{name}':
            problems.append(f"{name}: hf_hub_id is {cfg.get('hf_hub_id')!r}, expected '{HUB_ORG}/{name}'")
        if not (cards_dir / name / cards.RESULTS_NAME).is_file():
            problems.append(f'{name}: no {cards_dir / name / cards.RESULTS_NAME}; commit the card folder with the tag')
    for folder in sorted(p for p in cards_dir.iterdir() if p.is_dir()):
        try:
            results = cards.load_results(folder / cards.RESULTS_NAME)
        except cards.CardError as e:
            problems.append(str(e))
            continue
        card = folder / cards.CARD_NAME
        if folder.name != results.name:
            problems.append(f'{folder} holds the results of {results.name}; name the folder {results.name}')
        elif not card.is_file() or card.read_text(encoding='utf-8') != cards.render_card(results):
            problems.append(f'{card} is not the render of its results file; run timm-sae card {folder}')
    return problems


def test_check_cards_on_a_fake_registry(tmp_path):
    """The checker finds a published tag without a card, a wrong hf_hub_id and a stale card."""
    name = 'saeresnet18.fmnist'
    cfgs = {'saeresnet18.untrained': {}, name: {'hf_hub_id': f'{HUB_ORG}/{name}'}}
    problems = check_cards(cfgs, tmp_path)
    assert len(problems) == 1 and 'no ' in problems[0] and name in problems[0]

    folder = _card_folder(tmp_path, _sample_results())
    problems = check_cards(cfgs, tmp_path)
    assert len(problems) == 1 and 'not the render' in problems[0]  # README.md not rendered yet
    cards.write_card(folder)
    assert check_cards(cfgs, tmp_path) == []

    assert 'hf_hub_id' in check_cards({name: {'hf_hub_id': f'timm/{name}'}}, tmp_path)[0]
    # an exact conversion of timm's weights loads them from timm's repository and needs no card folder here
    conversion = {'saeresnet50.resnet50_a1_in1k': {'hf_hub_id': 'timm/resnet50.a1_in1k'}}
    assert check_cards({**cfgs, **conversion}, tmp_path) == []
    mislabelled = {'saeresnet50.a1_in1k': {'hf_hub_id': 'timm/resnet50.a1_in1k'}}
    assert 'hf_hub_id' in check_cards(mislabelled, tmp_path)[0]
    (folder / 'README.md').write_text((folder / 'README.md').read_text().replace('91.37', '93.0'))
    assert 'not the render' in check_cards(cfgs, tmp_path)[0]


def test_registered_tags_have_cards():
    cfgs = registered_cfgs()
    assert 'saeresnet50t.untrained' in cfgs  # timm has no weights of its plain or SE twin
    assert check_cards(cfgs, HUB_CARDS) == []


def test_committed_cards_are_fresh_renders():
    for folder in sorted(p for p in HUB_CARDS.iterdir() if p.is_dir()):
        expected = cards.render_card(cards.load_results(folder / 'results.json'))
        assert (folder / 'README.md').read_text(encoding='utf-8') == expected, f'run: timm-sae card {folder}'


def test_cli_card(tmp_path, capsys):
    folder = _card_folder(tmp_path, _sample_results())
    assert main(['card', str(folder)]) == 0
    assert (folder / 'README.md').read_text() == cards.render_card(cards.check_results(_sample_results()))
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


def test_results_match_the_exported_model_args():
    """A results file's model_args (JSON: lists) agree with the export's (tuples), and a difference is named."""
    results = cards.check_results(_sample_results(model_args={'sae_stages': [3, 4], 'sae_cardinality': 4}))
    cards.check_results_match(results, 'saeresnet18', results.params, dict(sae_stages=(3, 4), sae_cardinality=4))
    with pytest.raises(cards.CardError, match=r"the results have model_args \{'sae_stages': \[3, 4\]\}"):
        cards.check_results_match(results, 'saeresnet18', results.params, dict(sae_stages=(1, 2, 3, 4)))
    with pytest.raises(cards.CardError, match='give the results file of these weights'):
        cards.check_results_match(results, 'saeresnet34', results.params)
