"""One reader for weight files: what a file is, told by its bytes, then its weights, read without running its code.

``read_weights_file`` looks at the first bytes before it parses anything and tells apart a zip-based PyTorch
checkpoint (``torch.save``), a legacy PyTorch pickle, a safetensors file (8-byte header length, then a JSON
header), text and JSON, other known formats, an empty file, a folder and a file that cannot be read. Whatever
is not readable weights ends in one ``CheckpointError`` (a ``ValueError``) whose one-line message says what the
file is and what to give instead; the exception of torch, safetensors or zipfile is its ``__cause__``.

Pickles are never unpickled freely: PyTorch files are read only with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers and refuses any other Python object, and a pickle that ``torch.save`` did
not write is refused unread. timm's train.py checkpoints also hold their command line arguments as an
``argparse.Namespace``; that one class is allowed (``torch.serialization.safe_globals``): it is a plain
attribute bag whose unpickling runs no code of the file's choosing.
"""
import argparse
import codecs
import json
import logging
import os
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import safetensors.torch
import torch
from timm.models import clean_state_dict

from .convert import some_names
from .errors import CheckpointError, first_line

__all__ = ['Checkpoint', 'read_checkpoint', 'read_weights_file', 'nonfinite_weights', 'check_finite']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

GIVE = 'give a timm checkpoint (.pth.tar), a state dict (.pth, .bin) or a .safetensors file'
_HEAD_BYTES = 4096  # read to tell a file's kind
_SAFETENSORS_MAX_HEADER = 100 << 20  # safetensors refuses longer headers
# torch.save's legacy (non-zip) format starts with a pickled magic number: a LONG1 opcode and its 10 bytes
_TORCH_MAGIC = b'\x8a\n' + (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')
_PICKLE_PROTOCOLS = (b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05')
_FOREIGN = (  # (leading bytes, what a file starting with them is)
    (b'\x89HDF\r\n\x1a\n', 'an HDF5 file (Keras .h5 weights?)'),
    (b'\x93NUMPY', 'a NumPy .npy array'),
    (b'\x1f\x8b', 'gzip-compressed data (decompress it first)'),
    (b'\xfd7zXZ\x00', 'xz-compressed data (decompress it first)'),
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
)
# train.py arguments the export reads, with the types they must have
_DATA_ARGS = ('input_size', 'img_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')
_ARG_TYPES = {
    'model': str, 'num_classes': int, 'in_chans': int, 'model_kwargs': dict, 'gp': str, 'pretrained_path': str,
    'input_size': (list, tuple), 'img_size': int, 'crop_pct': (int, float), 'crop_mode': str, 'interpolation': str,
    'mean': (list, tuple), 'std': (list, tuple)}


@dataclass
class Checkpoint:
    """Weights read from a checkpoint, with what the checkpoint says about them."""
    state_dict: Dict[str, torch.Tensor]
    arch: Optional[str] = None  # timm train.py's ``arch`` (its ``--model``)
    args: Dict[str, Any] = field(default_factory=dict)  # train.py's arguments, when saved
    entry: str = ''  # the entry the weights came from ('state_dict', 'state_dict_ema'), '' for a plain state dict

    @property
    def data_config(self) -> Dict[str, Any]:
        """The preprocessing a train.py checkpoint was trained with, in train.py's argument names."""
        return {k: self.args[k] for k in _DATA_ARGS if self.args.get(k) not in (None, '')}


def read_weights_file(path: PathLike) -> Any:
    """The object a weights file holds; ``CheckpointError`` says what the file is when it holds no weights."""
    path = Path(path)
    head = _head(path)
    if head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
        _check_torch_zip(path)
        return _torch_load(path, 'PyTorch checkpoint')
    if head.startswith(_PICKLE_PROTOCOLS):
        if _TORCH_MAGIC not in head[:32]:
            raise CheckpointError(
                f'{path} is a Python pickle that torch.save did not write, which timm-sae does not unpickle; re-save '
                f'its weights where it is trusted, with torch.save(model.state_dict(), ...) or safetensors')
        return _torch_load(path, 'PyTorch checkpoint (legacy format)')
    header_bytes = struct.unpack('<Q', head[:8])[0] if len(head) > 8 else 0
    if head[8:9] == b'{' and header_bytes <= _SAFETENSORS_MAX_HEADER:
        return _read_safetensors(path, header_bytes)
    raise CheckpointError(f'{path} is {_describe(path, head)}, not weights; {GIVE}')


def _head(path: Path) -> bytes:
    """The file's first bytes, after refusing what is not a readable, non-empty file."""
    try:
        if path.is_dir():
            inside = [path / n for n in ('model.safetensors', 'pytorch_model.bin') if (path / n).is_file()]
            raise CheckpointError(
                f'{path} is a folder, not a weights file; ' + (f'give the file in it, {inside[0]}' if inside else GIVE))
        if not path.exists():
            raise CheckpointError(f'{path}: no such file; {GIVE}')
        if not path.is_file():
            raise CheckpointError(f'{path} is not a regular file (a device, pipe or socket); {GIVE}')
        with path.open('rb') as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        raise CheckpointError(f'{path} cannot be read ({e.strerror or first_line(e)}); check the path and its '
                              f'permissions') from e
    if not head:
        raise CheckpointError(f'{path} is empty (0 bytes); was it written to the end? {GIVE}')
    return head


def _check_torch_zip(path: Path) -> None:
    """Refuse a zip archive that is damaged or not one ``torch.save`` wrote."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as e:  # zipfile raises several kinds on a damaged archive
        raise CheckpointError(
            f'{path} is a truncated or damaged PyTorch checkpoint (its zip directory cannot be read: {_detail(e)}); '
            f'save it again') from e
    members = {name.split('/', 1)[-1] for name in names}
    if 'constants.pkl' in members:
        raise CheckpointError(
            f'{path} is a TorchScript archive (torch.jit.save), not weights; give its state dict: '
            f'torch.save(torch.jit.load(...).state_dict(), ...)')
    if 'data.pkl' not in members:
        raise CheckpointError(
            f'{path} is a zip archive ({some_names(sorted(names)) or "empty"}), not a PyTorch checkpoint; {GIVE}')


def _torch_load(path: Path, kind: str) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch's notes on pickle protocols and the like
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a damaged pickle makes torch's unpickler raise nearly any kind of exception
        unsafe = _unsafe_globals(path, e)
        if unsafe:
            raise CheckpointError(
                f'{path} holds pickled Python objects besides weights ({unsafe}), which timm-sae does not unpickle '
                f'(torch.load(weights_only=True) only); re-save its weights where it is trusted, with '
                f'torch.save(model.state_dict(), ...) or safetensors') from e
        raise CheckpointError(f'{path} is a damaged {kind} ({_detail(e)}); is it truncated? save it again') from e


def _unsafe_globals(path: Path, error: Exception) -> str:
    """The classes and functions the pickle needs beyond what weights_only allows; '' for other failures."""
    named = re.findall(r'Unsupported global: GLOBAL ([\w.]+)', str(error))
    if not named:
        return ''
    try:
        return ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) or ', '.join(named)
    except Exception:  # not a zip checkpoint: torch cannot list them all
        return ', '.join(named)


def _read_safetensors(path: Path, header_bytes: int) -> Dict[str, torch.Tensor]:
    size = path.stat().st_size
    try:
        if 8 + header_bytes > size:
            raise ValueError(f'its header claims {header_bytes} bytes, the file has {size}')
        return safetensors.torch.load_file(path, device='cpu')
    except Exception as e:  # safetensors' own errors, and torch's for tensors it cannot build
        raise CheckpointError(
            f'{path} is not a readable safetensors file ({_detail(e)}); is it truncated? save it again with '
            f'safetensors.torch.save_file') from e


def _detail(error: BaseException) -> str:
    """The telling line of an exception, with its type (torch puts it after a paragraph of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((line for line in lines if 'WeightsUnpickler error' in line), first_line(error))
    return f'{type(error).__name__}: {line[:200]}'


def _describe(path: Path, head: bytes) -> str:
    """What a file that holds no weights is, from its first bytes."""
    known = next((what for magic, what in _FOREIGN if head.startswith(magic)), None)
    if known:
        return known
    try:
        text = codecs.getincrementaldecoder('utf-8')().decode(head, final=False)
    except UnicodeDecodeError:
        text = ''
    if not text or not all(c.isprintable() or c in '\t\n\r\f' for c in text):
        return f'binary data of no weights format (its first bytes: {head[:8].hex(" ")})'
    if text.lstrip()[:1] in ('{', '['):
        try:
            data = json.loads(path.read_bytes()) if path.stat().st_size <= 1 << 20 else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            return f'a JSON file (keys: {some_names(list(data))})'
        if data is not None:
            return f'a JSON file (a {type(data).__name__})'
    first = next((line.strip() for line in text.splitlines() if line.strip()), '')
    return f'a text file (starting {first[:40]!r})'


def read_checkpoint(path: PathLike, use_ema: bool = False) -> Checkpoint:
    """Weights of a timm train.py checkpoint (EMA ones with ``use_ema``), state dict or safetensors file.

    DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes are stripped.
    """
    path = Path(path)
    obj = read_weights_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict or a timm checkpoint; {GIVE}')
    entry = ''
    if use_ema:
        entry = next((k for k in ('state_dict_ema', 'model_ema') if isinstance(obj.get(k), dict)), '')
        if not entry:
            raise CheckpointError(f'{path} has no EMA weights (state_dict_ema); export it without --ema')
    elif any(isinstance(obj.get(k), dict) for k in ('state_dict', 'model')):
        entry = 'state_dict' if isinstance(obj.get('state_dict'), dict) else 'model'
    state_dict = obj[entry] if entry else obj
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if not_tensors:
        raise CheckpointError(
            f'{path} is neither a state dict nor a timm checkpoint: {some_names(not_tensors)} are not named tensors')
    args = obj.get('args') if entry else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    wrong = [f'{k}={args[k]!r}' for k, kind in _ARG_TYPES.items() if args.get(k) is not None and not isinstance(args[k], kind)]
    if wrong:
        raise CheckpointError(f'{path} has train.py arguments of the wrong type ({some_names(wrong)}); '
                              f'give the state dict alone and name the architecture with --model')
    arch = obj.get('arch') if entry else None
    return Checkpoint(clean_state_dict(state_dict), arch if isinstance(arch, str) else None, args, entry)


def nonfinite_weights(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'' when every floating point tensor is finite, else which tensors hold NaN or inf, and how many values."""
    found = []
    for name, tensor in state_dict.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            counts = ' + '.join(f'{n} {what}' for n, what in ((nan, 'NaN'), (inf, 'inf')) if n)
            found.append(f'{name} ({counts} of {tensor.numel()})')
    return f'{len(found)} of {len(state_dict)} tensors hold NaN or inf: {some_names(found)}' if found else ''


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str, allow: bool = False) -> None:
    """Refuse (``CheckpointError``) weights with NaN or inf, naming them; with ``allow``, log them and go on."""
    report = nonfinite_weights(state_dict)
    if report and not allow:
        raise CheckpointError(
            f'{what} holds non-finite weights, {report}; give weights from before the training diverged, or pass '
            f'--allow-nonfinite (allow_nonfinite=True) to keep them')
    if report:
        _logger.warning(f'{what} holds non-finite weights, kept (--allow-nonfinite): {report}')
