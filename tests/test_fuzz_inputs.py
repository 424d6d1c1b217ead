"""Malformed weight files through ``timm-sae export``, ``timm-sae convert --model`` and the Python API.

A seeded generator (``random.Random``) makes the inputs: random bytes, text and JSON, truncations and byte flips of
valid ``.pth``, ``.pth.tar`` (train.py checkpoint), legacy ``.pth`` and ``.safetensors`` files, safetensors headers
with bad lengths, offsets and dtypes, pickles of other objects, zips with wrong members, and valid files of other
architectures. Every input must end in a one-line error (CLI exit status 1 or 2, no traceback; a ``CheckpointError``
from the API) with nothing written at the output path and no temporary folder left beside it.

The default run takes ``TIMM_SAE_FUZZ_CASES`` = 100 inputs (a few seconds); CI runs 1,000
(``TIMM_SAE_FUZZ_CASES=1000``, see ``.ci/run``). The test prints ``fuzz: N inputs, ...``.
"""
import argparse
import fractions
import io
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_sae  # noqa: F401
from timm_sae import hub
from timm_sae.cli import main

CASES = int(os.environ.get('TIMM_SAE_FUZZ_CASES', '100'))
SEED = int(os.environ.get('TIMM_SAE_FUZZ_SEED', '0'))

Case = Tuple[str, bytes]  # (what the input is, its bytes)


def _small_state_dict() -> Dict[str, torch.Tensor]:
    """A few tensors named like a ResNet's: small, so that byte flips often hit the file's structure."""
    g = torch.Generator().manual_seed(0)
    return {'conv1.weight': torch.randn(4, 3, 3, 3, generator=g), 'bn1.weight': torch.ones(4),
            'bn1.num_batches_tracked': torch.tensor(3), 'fc.weight': torch.randn(2, 4, generator=g),
            'fc.bias': torch.zeros(2, dtype=torch.float16)}


def _saved(tmp: Path, name: str, write: Callable[[Path], None]) -> bytes:
    path = tmp / name
    write(path)
    return path.read_bytes()


@pytest.fixture(scope='module')
def valid_files(tmp_path_factory) -> Dict[str, bytes]:
    """The bytes of valid files of each format: a state dict (.pth, legacy .pth, .safetensors), a train.py
    checkpoint."""
    tmp, sd = tmp_path_factory.mktemp('valid'), _small_state_dict()
    train = {'arch': 'saeresnet18', 'epoch': 3, 'state_dict': sd, 'state_dict_ema': sd,
             'args': argparse.Namespace(model='saeresnet18', num_classes=2, img_size=32)}
    return {
        '.pth': _saved(tmp, 'a.pth', lambda p: torch.save(sd, p)),
        '.pth.tar': _saved(tmp, 'a.pth.tar', lambda p: torch.save(train, p)),
        'legacy .pth': _saved(tmp, 'b.pth', lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False)),
        '.safetensors': _saved(tmp, 'a.safetensors', lambda p: save_file(sd, p)),
    }


def _random_bytes(rng: random.Random, files: Dict[str, bytes]) -> Case:
    return 'random bytes', rng.randbytes(rng.choice([1, 7, 8, 9, 64, 4096]))


def _text(rng: random.Random, files: Dict[str, bytes]) -> Case:
    words = ['garbage', 'root:x:0:0:root:/root:/bin/bash', 'PK', '{', 'weights', 'é', '\t', 'ñandú 🙂']
    return 'text', '\n'.join(' '.join(rng.choices(words, k=rng.randrange(1, 6))) for _ in range(3)).encode()


def _json(rng: random.Random, files: Dict[str, bytes]) -> Case:
    value = rng.choice([{'architecture': 'saeresnet18', 'num_classes': 3}, [1, 2, 3], 'text', 3.5, None,
                        {'state_dict': {'fc.weight': [[0.0]]}}])
    return 'JSON', json.dumps(value).encode()


def _truncation(rng: random.Random, files: Dict[str, bytes]) -> Case:
    kind = rng.choice(sorted(files))
    data = files[kind]
    return f'truncated {kind}', data[:rng.randrange(1, len(data))]


def _byte_flips(rng: random.Random, files: Dict[str, bytes]) -> Case:
    kind = rng.choice(sorted(files))
    data = bytearray(files[kind])
    for _ in range(rng.choice([1, 1, 2, 8])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return f'byte flips of {kind}', bytes(data)


def _safetensors_header(rng: random.Random, files: Dict[str, bytes]) -> Case:
    """A safetensors file whose header has a wrong length, offsets, dtype or shape, or is no JSON object."""
    data = files['.safetensors']
    length = struct.unpack('<Q', data[:8])[0]
    header, body = json.loads(data[8:8 + length]), data[8 + length:]
    name = rng.choice(sorted(k for k in header if k != '__metadata__'))
    what = rng.choice(['length', 'offsets', 'dtype', 'shape', 'not an object', 'bad JSON'])
    if what == 'offsets':
        start, end = header[name]['data_offsets']
        header[name]['data_offsets'] = rng.choice([[end, start], [start, end + 4096], [-1, end], [0, 1], 'x'])
    elif what == 'dtype':
        header[name]['dtype'] = rng.choice(['X9', 'F64', 'BOOL', 'F8_E4M3', '', 7])
    elif what == 'shape':
        header[name]['shape'] = rng.choice([[1000], [-1], [], 'x', [2, 2, 2, 2, 2]])
    raw = {'not an object': b'[1, 2]', 'bad JSON': b'{"a": '}.get(what, json.dumps(header).encode())
    if what == 'length':
        return 'safetensors header length', struct.pack('<Q', rng.choice([0, 1, len(raw) + 1, 1 << 40])) + raw + body
    return f'safetensors header {what}', struct.pack('<Q', len(raw)) + raw + body


class _Opaque:
    """A class no weights-only unpickler knows."""


def _other_pickles(rng: random.Random, files: Dict[str, bytes]) -> Case:
    tensor = torch.zeros(2)
    objects = [[tensor], (tensor,), 3, 'weights', {'fc.weight': [1.0]}, {1: tensor}, {'state_dict': 5},
               {'state_dict': {'fc.weight': tensor}, 'args': 'x'}, {'model': {'fc': {'weight': tensor}}},
               {'state_dict': {'fc.weight': tensor}, 'args': {'num_classes': 'ten'}}, argparse.Namespace(a=1),
               {'ratio': fractions.Fraction(1, 3)}, {}]
    obj = objects[rng.randrange(len(objects))]
    how = rng.choice(['torch.save', 'pickle.dumps'])
    if how == 'pickle.dumps':
        return f'pickle.dumps of a {type(obj).__name__}', pickle.dumps(rng.choice([obj, _Opaque()]))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return f'torch.save of a {type(obj).__name__}', buffer.getvalue()


def _zips(rng: random.Random, files: Dict[str, bytes]) -> Case:
    """Zip archives: random members, a torch file with a member left out, a TorchScript-like one, an empty one."""
    buffer = io.BytesIO()
    source = zipfile.ZipFile(io.BytesIO(files['.pth']))
    names = source.namelist()
    what = rng.choice(['random members', 'member left out', 'TorchScript', 'empty'])
    with zipfile.ZipFile(buffer, 'w') as archive:
        if what == 'random members':
            for i in range(rng.randrange(1, 4)):
                archive.writestr(f"{rng.choice(['a.txt', 'x/y.npy', 'm'])}{i}", rng.randbytes(16))
        elif what != 'empty':
            left_out = rng.choice(names) if what == 'member left out' else None
            for name in names:
                if name != left_out:
                    archive.writestr(name, source.read(name))
            if what == 'TorchScript':
                archive.writestr(names[0].split('/')[0] + '/constants.pkl', pickle.dumps(()))
    return f'zip: {what}', buffer.getvalue()


GENERATORS = [_random_bytes, _text, _json, _truncation, _byte_flips, _safetensors_header, _other_pickles, _zips]
SUFFIXES = ['.pth', '.pth.tar', '.safetensors', '.bin', '']


def _runs(path: Path, out: Path) -> List[Tuple[str, Callable[[], None]]]:
    """(name, call) of the four ways an input is given: both commands and both API functions."""
    return [
        ('timm-sae export', lambda: main(['export', str(path), str(out), '--model', 'saeresnet18'])),
        ('timm-sae convert', lambda: main(['convert', str(path), str(out), '--model', 'resnet18'])),
        ('export_checkpoint', lambda: hub.export_checkpoint(path, out, model_name='saeresnet18')),
        ('export_conversion', lambda: hub.export_conversion(str(path), out, source_model='resnet18')),
    ]


def _problem(name: str, call: Callable[[], None], capsys) -> str:
    """'' when the call ends in one clean one-line error, else what went wrong."""
    try:
        status = call()
    except SystemExit as e:  # argparse
        status = e.code
    except hub.CheckpointError as e:
        if name.startswith('timm-sae'):
            return f'CheckpointError escaped the CLI: {e}'
        return '' if '\n' not in str(e) else f'multi-line error: {e!r}'
    except Exception as e:  # what a user would meet as a traceback
        return f'traceback: {type(e).__name__}: {e}'
    err = capsys.readouterr().err
    if not name.startswith('timm-sae'):
        return f'accepted by {name}'
    if status not in (1, 2):
        return f'exit status {status}'
    if 'Traceback' in err or err.count('\n') != 1 or not err.startswith(f'{name}: error: '):
        return f'not a one-line error: {err!r}'
    return ''


def test_fuzzed_inputs_get_one_line_errors_and_write_nothing(valid_files, tmp_path, capsys):
    rng = random.Random(SEED)
    inputs, outputs = tmp_path / 'inputs', tmp_path / 'outputs'
    inputs.mkdir()
    outputs.mkdir()
    out = outputs / 'export'
    problems, tracebacks, partial = [], 0, 0
    for i in range(CASES):
        what, data = GENERATORS[i % len(GENERATORS)](rng, valid_files)
        path = inputs / f'{i}{rng.choice(SUFFIXES)}'
        path.write_bytes(data)
        for name, call in _runs(path, out):
            problem = _problem(name, call, capsys)
            left = sorted(p.name for p in outputs.iterdir())
            if left:
                partial += 1
                problem = f'{problem} wrote {left}'.strip()
                for p in outputs.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            tracebacks += problem.startswith('traceback') or 'Traceback' in problem
            if problem:
                problems.append(f'{what} ({path.name}) through {name}: {problem}')
        path.unlink()
    with capsys.disabled():
        print(f'\nfuzz: {CASES} inputs (seed {SEED}, 4 ways each), {tracebacks} tracebacks, {partial} partial writes, '
              f'{len(problems)} problems in all')
    assert not problems, '\n'.join(problems[:20])


@pytest.fixture(scope='module')
def other_models(tmp_path_factory):
    """A folder with the weights of a resnet18 (.pth) and a saeresnet18 (.safetensors), both of 3 classes."""
    folder = tmp_path_factory.mktemp('other_models')
    torch.manual_seed(0)
    resnet, sae = (timm.create_model(n, num_classes=3) for n in ('resnet18', 'saeresnet18'))
    torch.save(resnet.state_dict(), folder / 'resnet18.pth')
    save_file(sae.state_dict(), folder / 'saeresnet18.safetensors')
    return folder


@pytest.mark.parametrize('command, file, options, pattern', [
    pytest.param('export', 'resnet18.pth', ['--model', 'saeresnet18'], 'do not fit saeresnet18', id='export-plain'),
    pytest.param('export', 'saeresnet18.safetensors', ['--model', 'saeresnet18', '--num-classes', '7'], 'mis-shaped',
                 id='export-num-classes'),
    pytest.param('export', 'saeresnet18.safetensors', ['--model', 'saeresnet34'], 'do not fit saeresnet34',
                 id='export-architecture'),
    pytest.param('convert', 'saeresnet18.safetensors', ['--model', 'resnet18'], 'holds SaE weights already',
                 id='convert-sae'),
    pytest.param('convert', 'resnet18.pth', ['--model', 'resnet34'], 'do not fit resnet34', id='convert-architecture'),
    pytest.param('convert', 'resnet18.pth', ['--model', 'convnext_tiny'], 'convnext_tiny has no SaE twin',
                 id='convert-no-twin'),
])
def test_valid_files_of_other_architectures_and_class_counts(command, file, options, pattern, other_models, capsys):
    """Real weights that do not fit what the command is told: each a one-line error and nothing written."""
    assert main([command, str(other_models / file), str(other_models / 'out'), *options]) == 1
    err = capsys.readouterr().err
    assert pattern in err and err.count('\n') == 1, err
    assert sorted(p.name for p in other_models.iterdir()) == ['resnet18.pth', 'saeresnet18.safetensors']


@pytest.mark.parametrize('argv, pattern', [
    pytest.param(['convert', 'half.pth', 'out', '--model', 'resnet18'], 'truncated or damaged', marks=pytest.mark.slow),
    pytest.param(['export', 'passwd', 'out'], 'passwd is a text file', marks=pytest.mark.slow),
], ids=['convert-truncated', 'export-text'])
def test_the_cli_as_a_user_meets_it(argv, pattern, valid_files, tmp_path):
    """A real process: a truncated checkpoint given to convert; a text file given to export (slow: each process
    imports torch and timm; the fuzz test gives both kinds of file in-process)."""
    (tmp_path / 'passwd').write_text('root:x:0:0:root:/root:/bin/bash\n')
    (tmp_path / 'half.pth').write_bytes(valid_files['.pth'][:1000])
    done = subprocess.run([sys.executable, '-m', 'timm_sae.cli', *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and pattern in done.stderr and done.stderr.count('\n') == 1, done.stderr
    assert 'Traceback' not in done.stderr and not (tmp_path / 'out').exists()


def test_two_exports_racing_for_one_folder(valid_files, tmp_path, monkeypatch):
    """The second export finishes while the first is writing: the first fails clearly, the folder is the second's."""
    torch.manual_seed(0)
    path = tmp_path / 'w.pth'
    torch.save(timm.create_model('saeresnet18', num_classes=3).state_dict(), path)
    out = tmp_path / 'out'
    save_for_hf, calls = hub.save_for_hf, []

    def racing_save(model, folder, **kwargs):
        calls.append(folder)
        if len(calls) == 1:  # the first export, already past its check of the target: the second one runs now
            hub.export_checkpoint(path, out, model_name='saeresnet18', label_names=labels)
        save_for_hf(model, folder, **kwargs)

    labels = tmp_path / 'labels.txt'
    labels.write_text('a\nb\nc\n')
    monkeypatch.setattr(hub, 'save_for_hf', racing_save)
    with pytest.raises(hub.CheckpointError, match='created by another export while this one was written'):
        hub.export_checkpoint(path, out, model_name='saeresnet18')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['labels.txt', 'out', 'w.pth']  # no temporary folder
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert json.loads((out / 'config.json').read_text())['label_names'] == ['a', 'b', 'c']  # all the second's
