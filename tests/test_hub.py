"""Export to the Hub format, offline Hub loading, push against a fake client, the demo."""
import argparse
import fractions
import hashlib
import importlib
import importlib.util
import json
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import save_file

import timm_sae  # noqa: F401
from timm_sae import errors, hub
from timm_sae._testing import layout_hub_cache, offline_hub_cache
from timm_sae.cli import main
from timm_sae.family import family_table
from timm_sae.sae_resnet import SAE_PAPER_ID, Twins, twins

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = (2, 3, 32, 32)
# (architecture, non-default SaE arguments): a ResNet and a ResNeXt (slow; tests/test_transformers.py exports one too)
TWINS = [
    pytest.param('saeresnet18', dict(sae_cardinality=2, sae_rd_ratio=1. / 16, sae_residual=False), id='saeresnet18'),
    pytest.param('saeresnext26t_32x4d', dict(sae_cardinality=8, sae_residual=False), id='saeresnext26t_32x4d',
                 marks=pytest.mark.slow),
]


def _model(name='saeresnet18', seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).eval()


def _logits(model, seed=1):
    with torch.no_grad():
        return model(torch.randn(*SMALL, generator=torch.Generator().manual_seed(seed)))


def _tree(folder: Path):
    """Every file under folder with its bytes' hash and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A small saeresnet18 (3 classes) and its state dict saved as .pth."""
    model = _model(num_classes=3)
    path = tmp_path_factory.mktemp('weights') / 'saeresnet18.pth'
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope='module')
def exported(weights, tmp_path_factory):
    return hub.export_checkpoint(weights[1], tmp_path_factory.mktemp('export') / 'org.name', model_name='saeresnet18')


@pytest.mark.parametrize('name,sae_args', TWINS)
def test_round_trip_through_hub_cache(name, sae_args, tmp_path):
    model = _model(name, num_classes=5, **sae_args)
    checkpoint = tmp_path / 'weights.safetensors'
    save_file(model.state_dict(), checkpoint)
    folder = hub.export_checkpoint(checkpoint, tmp_path / 'out', model_name=name, model_kwargs=sae_args)
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == name and config['num_classes'] == 5
    # only what rebuilding needs: transformers' timm wrapper passes num_classes itself
    assert config['model_args'] == json.loads(json.dumps(dict(hub.sae_model_args(sae_args), in_chans=3)))
    cfg = config['pretrained_cfg']
    assert {'input_size', 'crop_pct', 'interpolation', 'mean', 'std'} <= cfg.keys()
    # the registry tag's description is not these weights': the SaE paper and the default license instead
    assert not {'tag', 'description', 'origin_url'} & cfg.keys()
    assert cfg['paper_ids'] == SAE_PAPER_ID and cfg['license'] == 'apache-2.0'

    snapshot = layout_hub_cache(folder, tmp_path / 'hub', 'org/name')
    ref = (tmp_path / 'hub' / 'models--org--name' / 'refs' / 'main').read_text()
    assert len(ref) == 40 and snapshot.name == ref and (snapshot / 'model.safetensors').is_file()
    with offline_hub_cache(tmp_path / 'hub'):
        from_repo = timm.create_model('hf-hub:org/name', pretrained=True).eval()
        from_tag = timm.create_model(
            name, pretrained=True, num_classes=5, **sae_args,
            pretrained_cfg_overlay=dict(hf_hub_id='org/name', num_classes=5)).eval()
        # what the model card shows: feature maps and embeddings
        features = timm.create_model('hf-hub:org/name', pretrained=True, features_only=True).eval()
        embedder = timm.create_model('hf-hub:org/name', pretrained=True, num_classes=0).eval()
    expected = _logits(model)
    assert torch.equal(_logits(from_repo), expected)
    assert torch.equal(_logits(from_tag), expected)
    assert len(_logits(features)) == 5 and _logits(embedder).shape == (SMALL[0], model.num_features)


def test_train_checkpoint_with_ema(tmp_path):
    """A checkpoint as timm's train.py (CheckpointSaver) writes it: DDP prefixes, EMA, args Namespace."""
    model, ema = _model(num_classes=4, in_chans=1, sae_cardinality=2), _model(
        seed=1, num_classes=4, in_chans=1, sae_cardinality=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(
        model='saeresnet18', num_classes=4, in_chans=1, model_kwargs={'sae_cardinality': 2}, img_size=32,
        input_size=None, mean=(0.5,), std=(0.25,), crop_pct=1.0, interpolation='', gp=None, lr=0.1, device='cpu')
    checkpoint = tmp_path / 'last.pth.tar'
    torch.save({
        'epoch': 3, 'arch': 'saeresnet18', 'version': 2, 'optimizer': optimizer.state_dict(), 'args': args,
        'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
        'state_dict_ema': ema.state_dict(), 'metric': 50.0,
        'saver': {'checkpoint_files': [], 'best_epoch': None, 'best_metric': None, 'pending': (3, 50.0)},
    }, checkpoint)

    for use_ema, source in ((False, model), (True, ema)):
        folder = hub.export_checkpoint(checkpoint, tmp_path / f'ema{use_ema}', use_ema=use_ema)
        config = json.loads((folder / 'config.json').read_text())
        assert config['model_args']['sae_cardinality'] == 2 and config['model_args']['in_chans'] == 1
        assert config['pretrained_cfg']['input_size'] == [1, 32, 32]
        assert config['pretrained_cfg']['mean'] == [0.5] and config['pretrained_cfg']['crop_pct'] == 1.0
        loaded = timm.create_model('local-dir:' + str(folder), pretrained=True).eval()
        with torch.no_grad():
            x = torch.randn(2, 1, 32, 32)
            assert torch.equal(loaded(x), source(x))


def test_ddp_prefix_stripped_from_plain_state_dict(weights, tmp_path):
    model, _ = weights
    path = tmp_path / 'ddp.pth'
    torch.save({f'module.{k}': v for k, v in model.state_dict().items()}, path)
    checkpoint = hub.read_checkpoint(path)
    assert checkpoint.state_dict.keys() == model.state_dict().keys() and checkpoint.entry == ''


def _bad_file(name: str, folder: Path, weights: Path) -> Path:
    """The file ``name`` of a bad input in ``folder``, made from the valid weights (saeresnet18, 3 classes)."""
    path = folder / name
    if name == 'weights':
        return weights
    if name.startswith('half.'):  # the first half of a valid file
        valid = folder / f'valid{path.suffix}'
        if path.suffix == '.safetensors':
            save_file(torch.load(weights, weights_only=True), valid)
        else:
            valid = weights
        path.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    elif name == 'object.pth':
        torch.save({'weights': torch.zeros(1), 'ratio': fractions.Fraction(1, 3)}, path)
    elif name == 'list.pth':
        torch.save([torch.zeros(1)], path)
    elif name == 'empty.pth':
        path.touch()
    return path


# id: (file, export arguments, message pattern) of inputs the export must refuse
BAD_INPUTS = {
    'wrong-architecture': ('weights', dict(model_name='saeresnet34'), r'do not fit saeresnet34.*missing'),
    'not-an-sae-model': ('weights', dict(model_name='resnet18'), 'not an SaE model'),
    'no-architecture': ('weights', {}, 'does not name its architecture'),
    'wrong-num-classes': ('weights', dict(model_name='saeresnet18', num_classes=7),
                          r'2 mis-shaped \(fc\.bias \(3,\) vs \(7,\), fc\.weight \(3, 512\) vs \(7, 512\)\)'),
    'wrong-sae-args': ('weights', dict(model_name='saeresnet18', model_kwargs=dict(sae_cardinality=8)), 'mis-shaped'),
    'no-ema': ('weights', dict(model_name='saeresnet18', use_ema=True), 'no EMA weights'),
    'truncated-pickle': ('half.pth', dict(model_name='saeresnet18'), 'truncated'),
    'truncated-safetensors': ('half.safetensors', dict(model_name='saeresnet18'), 'not a readable safetensors file'),
    'arbitrary-object': ('object.pth', dict(model_name='saeresnet18'), r'fractions\.Fraction.*weights_only'),
    'not-a-state-dict': ('list.pth', dict(model_name='saeresnet18'), 'holds a list'),
    'empty': ('empty.pth', dict(model_name='saeresnet18'), 'is empty'),
    'missing': ('missing.pth', dict(model_name='saeresnet18'), 'no such file'),
}


@pytest.mark.parametrize('file, kwargs, pattern', BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_give_clear_errors_and_write_nothing(file, kwargs, pattern, weights, tmp_path):
    checkpoint = _bad_file(file, tmp_path, weights[1])
    out_parent = tmp_path / 'exports'
    out_parent.mkdir()
    with pytest.raises(hub.CheckpointError, match=pattern):
        hub.export_checkpoint(checkpoint, out_parent / 'out', **kwargs)
    assert list(out_parent.iterdir()) == []


def test_nonfinite_weights_named_and_refused_unless_allowed(weights, tmp_path, capsys, caplog):
    state_dict = weights[0].state_dict()
    state_dict['conv1.weight'][0, 0, 0, 0] = float('inf')
    state_dict['fc.bias'][:] = float('nan')
    torch.save(state_dict, tmp_path / 'diverged.pth')
    assert main(['export', str(tmp_path / 'diverged.pth'), str(tmp_path / 'out'), '--model', 'saeresnet18']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and not (tmp_path / 'out').exists()
    assert '2 of 154 tensors hold NaN or inf: conv1.weight (1 inf of 9408), fc.bias (3 NaN of 3)' in err
    assert '--allow-nonfinite' in err
    with caplog.at_level('WARNING', logger='timm_sae.checkpoint'):
        assert main(['export', str(tmp_path / 'diverged.pth'), str(tmp_path / 'out'), '--model', 'saeresnet18',
                     '--allow-nonfinite']) == 0
    assert 'fc.bias (3 NaN of 3)' in caplog.text
    assert (tmp_path / 'out' / 'model.safetensors').is_file()


def test_existing_folder_untouched_unless_overwrite(weights, tmp_path):
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    before = _tree(target)
    with pytest.raises(hub.CheckpointError, match='exists.*--overwrite'):
        hub.export_checkpoint(weights[1], target, model_name='saeresnet18')
    assert _tree(target) == before
    hub.export_checkpoint(weights[1], target, model_name='saeresnet18', overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # no temporary folders left


def test_label_names(weights, tmp_path):
    (tmp_path / 'labels.txt').write_text('cat\ndog\nbird\n')
    folder = hub.export_checkpoint(
        weights[1], tmp_path / 'out', model_name='saeresnet18', label_names=tmp_path / 'labels.txt')
    assert json.loads((folder / 'config.json').read_text())['label_names'] == ['cat', 'dog', 'bird']
    (tmp_path / 'two.json').write_text('["cat", "dog"]')
    with pytest.raises(hub.CheckpointError, match='2 label names for 3 classes'):
        hub.export_checkpoint(
            weights[1], tmp_path / 'out2', model_name='saeresnet18', label_names=tmp_path / 'two.json')


def test_cli_export_errors(weights, tmp_path, capsys):
    assert main(['export', str(tmp_path / 'missing.pth'), str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('timm-sae export: error:') and 'no such file' in err and err.count('\n') == 1
    assert main(['export', str(weights[1]), str(tmp_path / 'out'), '--model', 'saeresnet18',
                 '--model-kwargs', 'sae_cardinality=8']) == 1
    err = capsys.readouterr().err
    assert 'mis-shaped' in err and err.count('\n') == 1 and not (tmp_path / 'out').exists()
    assert main(['export', str(weights[1]), str(tmp_path / 'out'), '--model', 'saeresnet18']) == 0
    assert (tmp_path / 'out' / 'model.safetensors').is_file()


class FakeHfApi:
    """Records the calls push_folder makes; holds the files already in the remote repository."""

    def __init__(self, remote_files=(), error=None):
        self.calls, self.remote_files, self.error, self.uploaded = [], set(remote_files), error, None

    def _call(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.error is not None:
            raise self.error

    def create_repo(self, repo_id, **kwargs):
        self._call('create_repo', repo_id, **kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        self._call('create_branch', repo_id, **kwargs)

    def file_exists(self, repo_id, filename, **kwargs):
        self._call('file_exists', repo_id, filename, **kwargs)
        return filename in self.remote_files

    def upload_folder(self, **kwargs):
        self._call('upload_folder', **kwargs)
        self.uploaded = sorted(
            p.name for p in Path(kwargs['folder_path']).iterdir()
            if any(fnmatch(p.name, pattern) for pattern in kwargs['allow_patterns']))
        return SimpleNamespace(commit_url='https://huggingface.co/org/name/commit/0', pr_url=None)


def test_push_new_repo(exported):
    before = _tree(exported)
    (exported / 'notes.txt').write_text('not part of the export')
    api = FakeHfApi()
    try:
        hub.push_folder(
            exported, 'org/name', token='hf_x', private=True, revision='v1', commit_message='Add weights', api=api)
    finally:
        (exported / 'notes.txt').unlink()
    assert _tree(exported) == before
    names = [c[0] for c in api.calls]
    assert names == ['create_repo', 'create_branch', 'file_exists', 'upload_folder']
    assert api.calls[0][1:] == (('org/name',), dict(private=True, exist_ok=True))
    assert api.calls[1][2] == dict(branch='v1', exist_ok=True)
    upload = api.calls[-1][2]
    assert upload['repo_id'] == 'org/name' and upload['revision'] == 'v1' and upload['create_pr'] is False
    assert upload['commit_message'] == 'Add weights'
    assert api.uploaded == ['README.md', 'config.json', 'model.safetensors']


@pytest.mark.parametrize('update_card', [False, True])
def test_push_keeps_remote_card_unless_update_card(exported, update_card):
    api = FakeHfApi(remote_files={'README.md'})
    hub.push_folder(exported, 'org/name', token='hf_x', create_pr=True, update_card=update_card, api=api)
    assert 'create_branch' not in [c[0] for c in api.calls]
    assert api.calls[-1][2]['create_pr'] is True
    expected = ['config.json', 'model.safetensors']
    assert api.uploaded == (['README.md'] + expected if update_card else expected)


def _http_error(status):
    request = httpx2.Request('POST', 'https://huggingface.co/api/repos/create')
    return HfHubHTTPError(f'{status} error', response=httpx2.Response(status, request=request))


@pytest.mark.parametrize('error,pattern', [
    (_http_error(401), 'refused the token'),
    (_http_error(403), 'may not write to org/name'),
    (ConnectionError('connection refused'), 'could not reach the Hugging Face Hub'),
])
def test_push_failures_are_one_line(exported, error, pattern):
    with pytest.raises(hub.PushError, match=pattern) as info:
        hub.push_folder(exported, 'org/name', token='hf_x', api=FakeHfApi(error=error))
    assert '\n' not in str(info.value)


def test_push_without_token(exported, monkeypatch, capsys):
    monkeypatch.setattr(hub, 'get_token', lambda: None)
    api = FakeHfApi()
    before = _tree(exported)
    with pytest.raises(hub.PushError, match='no Hugging Face token'):
        hub.push_folder(exported, 'org/name', api=api)
    assert api.calls == [] and _tree(exported) == before
    assert main(['push', str(exported), '--repo-id', 'org/name']) == 1
    err = capsys.readouterr().err
    assert err.startswith('timm-sae push: error: no Hugging Face token') and err.count('\n') == 1


def test_push_refuses_other_folders_and_bad_ids(exported, tmp_path):
    with pytest.raises(hub.PushError, match='lacks model.safetensors, config.json, README.md'):
        hub.push_folder(tmp_path, 'org/name', token='hf_x', api=FakeHfApi())
    with pytest.raises(hub.PushError, match='needs its owner'):
        hub.push_folder(exported, 'name', token='hf_x', api=FakeHfApi())


def test_save_export_of_a_registry_model_replaces_the_tag_description(tmp_path):
    """A model built from a registry tag: config.json does not carry that tag's description, license and papers."""
    model = _model(num_classes=3)
    assert model.pretrained_cfg['description'] and model.pretrained_cfg['tag']
    folder = hub.save_export(model, tmp_path / 'out', license='mit')
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    assert cfg['license'] == 'mit' and cfg['paper_ids'] == SAE_PAPER_ID
    assert cfg['tag'] is None and cfg['description'] is None  # null: not the registry tag's
    meta = ModelCard.load(folder / 'README.md').data
    assert meta.license == 'mit' and meta.base_model is None


def test_twins_name_the_family_once():
    assert twins('seresnet50.a1_in1k') == twins('resnet50') == twins('saeresnet50') == Twins(
        'resnet50', 'seresnet50', 'saeresnet50')
    assert twins('saeresnet26') == Twins('resnet26', None, 'saeresnet26')  # timm has no seresnet26
    assert twins('seresnext26d_32x4d') == Twins(None, 'seresnext26d_32x4d', 'saeresnext26d_32x4d')
    assert twins('resnet10t') == twins('seresnet26') == twins('selecsls42') == Twins(None, None, None)


def test_family_table_shows_true_twins_and_counts_tags_by_weights(monkeypatch):
    monkeypatch.setattr(timm, 'list_models', lambda *args, **kwargs: [
        'saeresnet26', 'saeresnet50t', 'saeresnext26d_32x4d'])
    header, _, *lines = family_table(img_size=32)
    rows = {line.split(' | ')[0][2:]: line.split(' | ')[1:] for line in lines}
    assert header.endswith('| SE twin | SE twin params (M) | default tag | license | weight tags: plain + SE + SaE | '
                           'untrained tags |')
    assert rows['saeresnet26'][2:4] == ['none', '-']
    assert rows['saeresnet26'][-2:] == ['1 + 0 + 0', '0 |']
    assert rows['saeresnet50t'][2] == 'seresnet50t' and rows['saeresnet50t'][-4:] == [
        'untrained', 'apache-2.0', '0 + 0 + 0', '1 |']
    assert rows['saeresnext26d_32x4d'][2] == 'seresnext26d_32x4d' and rows['saeresnext26d_32x4d'][-2:] == [
        '0 + 1 + 0', '0 |']


@pytest.mark.slow  # CI runs the full `timm-sae demo` as a step of its own
def test_demo_command(monkeypatch, capsys):
    """``timm-sae demo`` on a small model: exact Hub round trip and warm start, timed against the SE twin."""
    monkeypatch.setattr(timm, 'list_models', lambda *args, **kwargs: ['saeresnet18'])  # a one-row family table
    assert main(['demo', '--model', 'saeresnet18', '--img-size', '32', '--batch-size', '2', '--rounds', '1']) == 0
    out = capsys.readouterr().out
    assert "timm.create_model('hf-hub:" in out and 'bit-identical' in out and 'relative logit difference' in out
    assert '\n| saeresnet18 | ' in out and '\n| seresnet18 | ' in out


def test_export_goes_one_way(weights, tmp_path):
    """timm-sae export enters each package module once, in one direction (.ci/export_path.py prints the path)."""
    spec = importlib.util.spec_from_file_location('export_path', REPO_ROOT / '.ci' / 'export_path.py')
    export_path = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_path)
    _, path = weights
    stops = export_path.trace(
        lambda: main(['export', str(path), str(tmp_path / 'out'), '--model', 'saeresnet18']),
        Path(timm_sae.__file__).parent)
    path = export_path.counted(stops)
    assert path == ['cli', 'hub', 'checkpoint', 'measure', 'cards', 'hub'], stops
    assert len(path) <= 6 and export_path.returns(path) <= 2


@pytest.mark.parametrize('name,module', [
    ('conversion_tag', 'sae_resnet'), ('pretrained_filter', 'sae_resnet'), ('SAE_PAPER_ID', 'sae_resnet'),
    ('train_args_gate', 'checkpoint'),
])
def test_moved_names_warn_for_one_release(name, module):
    from timm_sae import convert
    with pytest.warns(DeprecationWarning, match=f'import it from timm_sae.{module}'):
        moved = getattr(convert, name)
    assert moved is getattr(importlib.import_module(f'timm_sae.{module}'), name)
    assert not hasattr(convert, 'no_such_name')


def test_weights_file_module_warns_for_one_release(monkeypatch):
    monkeypatch.delitem(sys.modules, 'timm_sae.weights_file', raising=False)
    with pytest.warns(DeprecationWarning, match='import from timm_sae.checkpoint'):
        weights_file = importlib.import_module('timm_sae.weights_file')
    assert weights_file.read_checkpoint is hub.read_checkpoint


def test_cli_catches_every_timm_sae_error():
    """One family of exceptions: every class of timm_sae.errors derives from TimmSaeError."""
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(classes) == 8 and all(issubclass(c, errors.TimmSaeError) for c in classes)
