"""timm's own scripts on the SaE family, end to end, each run as a user would run it (a subprocess).

train.py (``--device-modules timm_sae``) -> ``timm-sae export`` -> a Hub cache -> ``timm-sae run validate.py``
on ``hf-hub:`` and on the checkpoint -> train.py fine-tuning from ``hf-hub:`` -> inference.py, benchmark.py,
onnx_export.py and onnx_validate.py on ``hf-hub:`` -> train.py ``--pretrained`` on a warm-start tag (timm's
plain ResNet weights, converted while loading). The scripts come with timm's source, not its wheel: these
tests run when ``TIMM_SAE_SCRIPTS_DIR`` names a folder holding them (``.ci/run`` gives
``../shared/timm-scripts``) and skip otherwise. Everything is offline: a tiny seeded ImageFolder, a Hub cache
in a temporary folder (``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE``), 32 px images on the CPU, one epoch.
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import timm_sae  # noqa: F401  registers the family in this process too
from timm_sae._testing import layout_hub_cache, offline_hub_cache
from timm_sae.hub import read_checkpoint

pytestmark = pytest.mark.slow

SCRIPTS_ENV = 'TIMM_SAE_SCRIPTS_DIR'
SCRIPTS = ('train.py', 'validate.py', 'inference.py', 'benchmark.py', 'onnx_export.py', 'onnx_validate.py')
ENABLE = (
    f'set {SCRIPTS_ENV} to a folder with timm\'s scripts ({", ".join(SCRIPTS)}) to run these tests: '
    f'{SCRIPTS_ENV}=../shared/timm-scripts in this project, or a checkout of timm\'s source at the installed '
    f'version (git clone -b v{timm.__version__} https://github.com/huggingface/pytorch-image-models)')

ARCH = 'saeresnet18'
# not the defaults: checks that the entrypoint arguments travel (train.py's --model-kwargs parses K=V as literals)
SAE_ARGS = dict(sae_cardinality=2, sae_stages=(2, 3, 4))
SAE_KWARGS = [f'{k}={v!r}'.replace(' ', '') for k, v in SAE_ARGS.items()]
IMG_SIZE = 32
# explicit eval preprocessing (not the architecture's defaults): checks that it travels through the export
EVAL_ARGS = ['--crop-pct', '0.9', '--interpolation', 'bilinear']
HUB_REPO = 'local-test/saeresnet18.tiny'
WARM_START_TAG = f'{ARCH}.resnet18_a1_in1k'  # timm's resnet18.a1_in1k weights, converted while loading
WARM_START_SOURCE = 'timm/resnet18.a1_in1k'
# relative L2 change of a conv weight: three steps at train.py's default learning rate move the stem conv about
# 0.05 and the others under 0.01; two independent initialisations differ by about sqrt(2)
CLOSE = 0.25


def _scripts_dir() -> Path:
    value = os.environ.get(SCRIPTS_ENV, '')
    if not value:
        pytest.skip(ENABLE)
    folder = Path(value).resolve()
    missing = [name for name in SCRIPTS if not (folder / name).is_file()]
    if missing:
        where = value if str(folder) == value else f'{value} ({folder})'
        pytest.fail(f'{SCRIPTS_ENV}={where} lacks {", ".join(missing)}; {ENABLE}', pytrace=False)
    return folder


@pytest.fixture(scope='module')
def scripts() -> Path:
    return _scripts_dir()


@pytest.fixture(scope='module')
def work(scripts, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('timm_scripts')


@pytest.fixture(scope='module')
def hub_cache(work) -> Path:
    return work / 'hub-cache'


@pytest.fixture(scope='module')
def env(work, hub_cache) -> Dict[str, str]:
    """Environment of every script: offline, the temporary Hub cache, no token, one torch thread.

    One thread: at 32 px two gain nothing, and on a busy machine OpenMP's barrier waits slow a train.py run
    down (see ``single_thread`` in conftest.py).
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    return dict(
        base, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(hub_cache), HF_HOME=str(work / 'hf-home'),
        HF_HUB_DISABLE_TELEMETRY='1', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def _image_folder(root: Path, num_classes: int, per_class: Mapping[str, int], seed: int) -> Path:
    """An ImageFolder of seeded 40x40 RGB PNGs (``<split>/class<i>/c<i>_<n>.png``; unique basenames)."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c in range(num_classes):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for n in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'c{c}_{n}.png')
    return root


@pytest.fixture(scope='module')
def data3(work) -> Path:
    return _image_folder(work / 'data3', 3, dict(train=4, validation=5), seed=0)


@pytest.fixture(scope='module')
def data2(work) -> Path:
    return _image_folder(work / 'data2', 2, dict(train=4, validation=2), seed=1)


def _run(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """Run ``python ARGS`` (the venv's interpreter); its output, or the test fails showing the output's end."""
    done = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f'`python {" ".join(map(str, args))}` exited with {done.returncode}:\n{output[-6000:]}',
                    pytrace=False)
    return output


def _timm_sae_run(scripts: Path, script: str, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """``timm-sae run SCRIPT ARGS`` (the package's command line)."""
    return _run(['-m', 'timm_sae.cli', 'run', scripts / script, *args], env, cwd)


def _train(scripts: Path, data: Path, experiment: str, model_args: Sequence[str], env, cwd: Path) -> Path:
    """One epoch of train.py on the CPU at 32 px; the folder of its output."""
    _run([
        scripts / 'train.py', data, '--device-modules', 'timm_sae', *model_args,
        '--device', 'cpu', '--img-size', IMG_SIZE, *EVAL_ARGS, '-b', 4, '--epochs', 1, '--warmup-epochs', 0,
        '--workers', 0, '--no-prefetcher', '--checkpoint-hist', 1, '--log-interval', 1,
        '--output', cwd / 'train', '--experiment', experiment,
    ], env, cwd)
    return cwd / 'train' / experiment


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return ((new.float() - old.float()).norm() / old.float().norm()).item()


def _assert_close_weights(trained: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], what: str) -> None:
    """Every conv weight of ``trained`` is within a fine-tuning step's change of ``start``: it started there."""
    keys = [k for k, v in start.items() if v.ndim == 4]
    assert keys
    moved = {k: round(_relative_change(trained[k], start[k]), 3) for k in keys}
    far = {k: v for k, v in moved.items() if v >= CLOSE}
    assert not far, f'these weights did not start from {what}: {far}'


# ---- the chain: train.py once, then export, a Hub cache, and the later steps on them ----

@pytest.fixture(scope='module')
def trained(scripts, data3, env, work) -> Path:
    """train.py --device-modules timm_sae --model saeresnet18 --model-kwargs SAE_KWARGS, 3 classes."""
    return _train(scripts, data3, 'base', [
        '--model', ARCH, '--model-kwargs', *SAE_KWARGS, '--num-classes', 3], env, work)


@pytest.fixture(scope='module')
def exported(trained, env, work) -> Path:
    """``timm-sae export`` of the checkpoint, with the class names."""
    names = work / 'labels.txt'
    names.write_text('class0\nclass1\nclass2\n')
    folder = work / 'export' / HUB_REPO.split('/')[1]
    _run(['-m', 'timm_sae.cli', 'export', trained / 'last.pth.tar', folder, '--label-names', names], env, work)
    return folder


@pytest.fixture(scope='module')
def hub_model(exported, hub_cache) -> str:
    layout_hub_cache(exported, hub_cache, HUB_REPO)
    return f'hf-hub:{HUB_REPO}'


def _checkpoint_model_args(trained: Path) -> List[str]:
    """How a user names the checkpoint's model to validate.py / inference.py."""
    return [
        '--model', ARCH, '--model-kwargs', *SAE_KWARGS, '--num-classes', 3,
        '--checkpoint', trained / 'last.pth.tar', '--img-size', IMG_SIZE, *EVAL_ARGS]


def test_train_py_builds_the_requested_sae_model(trained):
    ckpt = read_checkpoint(trained / 'last.pth.tar')
    assert ckpt.arch == ARCH and ckpt.args['model_kwargs'] == SAE_ARGS
    shapes = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    requested = timm.create_model(ARCH, num_classes=3, **SAE_ARGS, device='meta').state_dict()
    default = timm.create_model(ARCH, num_classes=3, device='meta').state_dict()
    assert shapes == {k: tuple(v.shape) for k, v in requested.items()}
    assert shapes != {k: tuple(v.shape) for k, v in default.items()}  # the kwargs made a difference


def test_export_config_carries_arguments_and_preprocessing(exported):
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == ARCH and config['num_classes'] == 3
    assert config['model_args']['sae_cardinality'] == 2 and config['model_args']['sae_stages'] == [2, 3, 4]
    assert config['label_names'] == ['class0', 'class1', 'class2']
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, IMG_SIZE, IMG_SIZE]
    assert (cfg['crop_pct'], cfg['interpolation']) == (0.9, 'bilinear')


def _validate(scripts, data, model_args, name, env, work) -> dict:
    path = work / f'validate-{name}.json'
    _timm_sae_run(scripts, 'validate.py', [
        data, '--split', 'validation', *model_args, '--device', 'cpu', '-b', 4, '--workers', 0,
        '--no-prefetcher', '--results-file', path, '--results-format', 'json'], env, work)
    return json.loads(path.read_text())


@pytest.fixture(scope='module')
def validated(scripts, data3, trained, hub_model, env, work) -> Dict[str, dict]:
    return {
        'hub': _validate(scripts, data3, ['--model', hub_model, '--pretrained'], 'hub', env, work),
        'checkpoint': _validate(scripts, data3, _checkpoint_model_args(trained), 'checkpoint', env, work),
    }


def test_validate_py_on_hub_matches_the_checkpoint_and_train_py(validated, trained):
    hub, checkpoint = validated['hub'], validated['checkpoint']
    assert hub['model'] == f'hf-hub:{HUB_REPO}'
    # the Hub config alone gives validate.py the preprocessing the checkpoint run states on its command line
    for key in ('img_size', 'crop_pct', 'interpolation', 'param_count'):
        assert hub[key] == checkpoint[key], key
    assert (hub['img_size'], hub['crop_pct'], hub['interpolation']) == (IMG_SIZE, 0.9, 'bilinear')
    assert hub['top1'] == checkpoint['top1'] and hub['top5'] == checkpoint['top5']
    with open(trained / 'summary.csv', newline='') as f:
        last_epoch = list(csv.DictReader(f))[-1]
    # train.py evaluated the same weights on the same split with the same preprocessing
    assert hub['top1'] == pytest.approx(float(last_epoch['eval_top1']), abs=1e-3)


def test_train_py_fine_tunes_from_hub_with_another_class_count(scripts, data2, hub_model, exported, env, work):
    out = _train(scripts, data2, 'finetune', ['--model', hub_model, '--pretrained', '--num-classes', 2], env, work)
    weights = _weights(out / 'last.pth.tar')
    assert weights['fc.weight'].shape == (2, 512) and weights['fc.bias'].shape == (2,)
    hub_weights = _weights(exported / 'model.safetensors')
    # the config's model_args (SAE_ARGS) built the model: every non-classifier shape fits the Hub weights
    assert {k: v.shape for k, v in weights.items() if not k.startswith('fc.')} == {
        k: v.shape for k, v in hub_weights.items() if not k.startswith('fc.')}
    _assert_close_weights(weights, hub_weights, HUB_REPO)


def test_hub_model_has_the_checkpoint_weights(trained, hub_model, hub_cache):
    """timm's own hf-hub loader rebuilds the trained model from config.json and loads its weights bit for bit."""
    with offline_hub_cache(hub_cache):
        model = timm.create_model(hub_model, pretrained=True)
    loaded, saved = model.state_dict(), _weights(trained / 'last.pth.tar')
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_inference_py_on_hub_writes_named_predictions(scripts, data3, hub_model, validated, env, work):
    _timm_sae_run(scripts, 'inference.py', [
        data3, '--split', 'validation', '--model', hub_model, '--pretrained', '--device', 'cpu', '-b', 4,
        '--workers', 0, '--topk', 3, '--include-index', '--label-type', 'name', '--results-separate-col',
        '--results-dir', work / 'inference', '--results-file', 'hub', '--results-format', 'json',
        '--no-console-results'], env, work)
    rows = json.loads((work / 'inference' / 'hub.json').read_text())  # {filename: {index_i, label_i, prob_i}}
    assert len(rows) == 3 * 5  # data3's validation split: 3 classes of 5 images
    assert sorted(rows) == sorted(p.name for p in (data3 / 'validation').rglob('*.png'))
    for row in rows.values():
        indices = [row[f'index_{i}'] for i in range(3)]
        assert sorted(indices) == [0, 1, 2]
        # class names from the export's config.json (label_names), for the predicted indices
        assert [row[f'label_{i}'] for i in range(3)] == [f'class{i}' for i in indices]
        probs = [row[f'prob_{i}'] for i in range(3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    # same preprocessing as validate.py (the Hub config's), so the same top-1; file c<k>_<n>.png is class k
    correct = [row['index_0'] == int(name[1]) for name, row in rows.items()]
    assert 100 * sum(correct) / len(correct) == pytest.approx(validated['hub']['top1'], abs=1e-3)


def test_benchmark_py_runs_the_hub_model(scripts, hub_model, env, work):
    """benchmark.py at the Hub config's input size; a smoke run (5 steps), the throughput is not checked."""
    path = work / 'benchmark.json'
    _timm_sae_run(scripts, 'benchmark.py', [
        '--model', hub_model, '--device', 'cpu', '-b', 2, '--bench', 'inference', '--num-warm-iter', 1,
        '--num-bench-iter', 5, '--results-file', path, '--results-format', 'json'], env, work)
    result = json.loads(path.read_text())
    model = timm.create_model(ARCH, num_classes=3, **SAE_ARGS, device='meta')
    params = sum(p.numel() for p in model.parameters())
    assert (result['model'], result['infer_img_size']) == (hub_model, IMG_SIZE)
    assert result['param_count'] == round(params / 1e6, 2) and result['infer_samples_per_sec'] > 0


@pytest.fixture(scope='module')
def onnx_file(scripts, hub_model, env, work) -> Path:
    """onnx_export.py on the Hub model, with timm's own check of onnxruntime against PyTorch (--check-forward)."""
    path = work / 'saeresnet18.tiny.onnx'
    _timm_sae_run(scripts, 'onnx_export.py', [path, '--model', hub_model, '-b', 2, '--check-forward'], env, work)
    return path


def test_onnx_export_of_hub_model_runs_in_onnxruntime(onnx_file, hub_cache):
    import onnxruntime
    with offline_hub_cache(hub_cache):
        model = timm.create_model(f'hf-hub:{HUB_REPO}', pretrained=True).eval()
    batch = torch.randn(3, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))  # 3: batch is dynamic
    with torch.no_grad():
        expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_onnx_validate_py_matches_validate_py(scripts, onnx_file, data3, validated, env, work):
    output = _run([
        scripts / 'onnx_validate.py', data3 / 'validation', '--onnx-input', onnx_file, '--img-size', IMG_SIZE,
        *EVAL_ARGS, '-b', 4, '--workers', 0], env, work)
    found = re.search(r'\* Prec@1 ([\d.]+) \(([\d.]+)\) Prec@5 ([\d.]+)', output)
    assert found, output[-2000:]
    assert float(found[1]) == pytest.approx(validated['hub']['top1'], abs=1e-3)
    assert float(found[3]) == pytest.approx(validated['hub']['top5'], abs=1e-3)


@pytest.fixture(scope='module')
def stand_in_resnet18(hub_cache, work) -> Dict[str, torch.Tensor]:
    """Stand-in for timm's resnet18.a1_in1k in the Hub cache: a seeded timm resnet18 (1000 classes)."""
    torch.manual_seed(0)
    state_dict = {k: v.contiguous() for k, v in timm.create_model('resnet18').state_dict().items()}
    folder = work / 'resnet18.a1_in1k'
    folder.mkdir()
    save_file(state_dict, folder / 'model.safetensors')
    layout_hub_cache(folder, hub_cache, WARM_START_SOURCE)
    return state_dict


def test_train_py_warm_starts_from_plain_resnet_weights(scripts, data3, stand_in_resnet18, env, work):
    assert WARM_START_TAG in timm.list_pretrained(f'{ARCH}.*'), (
        f'{WARM_START_TAG} is not registered: timm_sae has no warm-start tags for {ARCH} yet')
    assert timm.models.get_pretrained_cfg(ARCH).hf_hub_id == WARM_START_SOURCE, (
        f'{WARM_START_TAG} is not the default tag of {ARCH}: --model {ARCH} --pretrained would not load it')
    out = _train(scripts, data3, 'warm-start', ['--model', ARCH, '--pretrained', '--num-classes', 3], env, work)
    weights = _weights(out / 'last.pth.tar')
    assert weights['fc.weight'].shape == (3, 512)
    assert any(k.endswith('.se.fc_branches.weight') for k in weights)  # an SaE model, from plain weights
    _assert_close_weights(weights, stand_in_resnet18, WARM_START_SOURCE)


# ---- the switch itself: skip without the variable, fail on a folder without the scripts ----

def test_train_py_trains_an_accelerated_seresnext(scripts, data2, env, work):
    """The documented route for timm's own SE models: ``--device-modules timm_sae.accelerate_all``."""
    output = _run([
        scripts / 'train.py', data2, '--device-modules', 'timm_sae.accelerate_all', '--model', 'seresnext50_32x4d',
        '--num-classes', 2, '--device', 'cpu', '--img-size', IMG_SIZE, '-b', 4, '--epochs', 1,
        '--warmup-epochs', 0, '--workers', 0, '--no-prefetcher', '--checkpoint-hist', 1, '--log-interval', 1,
        '--output', work / 'train', '--experiment', 'accelerated',
    ], env, work)
    assert 'timm_sae.accelerate_all: 16 blocks accelerated, 0 left as they are' in output
    ckpt = read_checkpoint(work / 'train' / 'accelerated' / 'last.pth.tar')
    plain = timm.create_model('seresnext50_32x4d', num_classes=2, device='meta').state_dict()
    assert ckpt.arch == 'seresnext50_32x4d'
    assert {k: tuple(v.shape) for k, v in ckpt.state_dict.items()} == {k: tuple(v.shape) for k, v in plain.items()}


def test_without_scripts_dir_the_tests_skip_saying_how_to_enable(monkeypatch):
    monkeypatch.delenv(SCRIPTS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        _scripts_dir()
    assert f'{SCRIPTS_ENV}=../shared/timm-scripts' in str(skipped.value)
    assert f'git clone -b v{timm.__version__} ' in str(skipped.value)


def test_a_scripts_dir_without_the_scripts_fails(monkeypatch, tmp_path):
    (tmp_path / 'train.py').write_text('')
    monkeypatch.setenv(SCRIPTS_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:  # a failure, not a skip: CI asked for these tests
        _scripts_dir()
    assert f'{SCRIPTS_ENV}={tmp_path} lacks validate.py, inference.py, benchmark.py' in str(failed.value)
    assert f'{SCRIPTS_ENV}=../shared/timm-scripts' in str(failed.value)
