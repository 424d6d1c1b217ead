"""A checkpoint to export: its weights, read without running its code, train.py's arguments, and the model they imply.

``read_export`` reads and checks a checkpoint once, works out the architecture, the entrypoint arguments, the gate
and the license from it and from train.py's arguments (``implied_model``, ``train_args_gate``), and builds the model
with its weights: what ``timm_sae.hub`` writes as a Hub folder. ``read_conversion_source`` reads the plain or SE
weights a conversion starts from: a checkpoint file, or timm's own weights by name.

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
from typing import Any, Dict, List, Literal, Mapping, NamedTuple, Optional, Tuple, Union, cast

import safetensors.torch
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from timm.models import PretrainedCfg, clean_state_dict, get_pretrained_cfg, split_model_name_tag
from timm.models.resnet import ResNet

from .convert import state_dict_mismatch
from .errors import CheckpointError, first_line, some_names
from .sae_resnet import loads_se_weights, source_kind, twins

__all__ = [
    'Checkpoint', 'Export', 'ConversionSource', 'read_checkpoint', 'read_weights_file', 'nonfinite_weights',
    'check_finite', 'train_args_gate', 'timm_arch', 'implied_model', 'check_fit', 'load_weights',
    'model_from_checkpoint', 'read_label_names', 'read_export', 'sae_target', 'read_conversion_source',
]

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
# pretrained cfg fields that describe particular weights rather than the architecture and its preprocessing
DESCRIPTIVE_CFG_KEYS = ('tag', 'description', 'notes', 'license', 'paper_ids', 'paper_name', 'origin_url')
_DATA_ARGS = ('input_size', 'img_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')
_ARG_TYPES: Dict[str, Union[type, Tuple[type, ...]]] = {
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


@dataclass
class Export:
    """A model to write as a Hub folder, with what its config.json and card say besides its weights."""
    model: ResNet
    model_args: Dict[str, Any] = field(default_factory=dict)  # the entrypoint arguments it was built with
    data_config: Dict[str, Any] = field(default_factory=dict)  # its preprocessing, in train.py's argument names
    label_names: List[str] = field(default_factory=list)
    license: Optional[str] = None  # of the weights it was fine-tuned from; None: unknown
    source: Any = None  # the ``timm_sae.cards.Source`` of an exact conversion


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
    not_tensors = sorted(
        str(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if not_tensors:
        raise CheckpointError(
            f'{path} is neither a state dict nor a timm checkpoint: {some_names(not_tensors)} are not named tensors')
    args = obj.get('args') if entry else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    wrong = [f'{k}={args[k]!r}' for k, kind in _ARG_TYPES.items()
             if args.get(k) is not None and not isinstance(args[k], kind)]
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


def train_args_gate(args: Mapping[str, Any]) -> Dict[str, bool]:
    """``{'sae_residual': False}`` where timm's train.py with these ``args`` built the plain gate without being told
    (``--pretrained`` on a tag of SE weights), else ``{}``: what rebuilding its checkpoint needs."""
    if not args.get('pretrained') or args.get('pretrained_path') or 'sae_residual' in (args.get('model_kwargs') or {}):
        return {}
    arch = split_model_name_tag(args.get('model') or '')[0]
    cfg = get_pretrained_cfg(args['model']) if arch in timm.list_models(module='sae_resnet') else None
    return {'sae_residual': False} if cfg is not None and loads_se_weights(arch, vars(cfg)) else {}


def _inherited_license(checkpoint: Checkpoint) -> Optional[str]:
    """The license of the weights train.py started from (``--pretrained``), which fine-tuned weights keep."""
    args = checkpoint.args
    if not args.get('pretrained') or args.get('pretrained_path') or not args.get('model'):
        return None
    cfg = get_pretrained_cfg(args['model'])
    return cfg.license if cfg is not None and cfg.has_weights else None


def timm_arch(name: str) -> str:
    """The architecture of a timm model name (tag dropped); ``CheckpointError`` unless timm has it."""
    arch = split_model_name_tag(name)[0]
    if not timm.is_model(arch):
        raise CheckpointError(f'{arch} is not a timm model; give the checkpoint\'s architecture with --model')
    return arch


def implied_model(checkpoint: Checkpoint, model_name: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """The architecture (a timm model, tag dropped) and ``create_model`` arguments a checkpoint's weights imply.

    The architecture is ``model_name``, else train.py's ``--model``, else the checkpoint's ``arch``. train.py's
    ``--model-kwargs`` and ``--gp`` come along; ``num_classes`` and ``in_chans`` are train.py's, else what the
    shapes of the classifier and first conv weights give (0 classes without a classifier).
    """
    args = checkpoint.args
    name = model_name or args.get('model') or checkpoint.arch
    if not name:
        raise CheckpointError('the checkpoint does not name its architecture; give it with --model (timm-sae list)')
    arch = timm_arch(name)
    cfg, weights = get_pretrained_cfg(arch) or PretrainedCfg(), checkpoint.state_dict
    head, stem = weights.get(f'{cfg.classifier}.weight'), weights.get(f'{cfg.first_conv}.weight')
    kwargs = {**(args.get('model_kwargs') or {}), **({'global_pool': args['gp']} if args.get('gp') else {})}
    kwargs['num_classes'] = next(n for n in (
        args.get('num_classes'), head.shape[0] if head is not None and head.dim() == 2 else 0) if n is not None)
    kwargs['in_chans'] = next(n for n in (
        args.get('in_chans'), stem.shape[1] if stem is not None and stem.dim() == 4 else cfg.input_size[0])
        if n is not None)
    return arch, kwargs


def check_fit(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """``CheckpointError`` naming missing, unexpected and mis-shaped keys, and ``fix``, unless ``weights`` fit."""
    problems = state_dict_mismatch(model.state_dict(), weights)
    if problems:
        raise CheckpointError(f'the weights do not fit {what}: {problems}; {fix}')


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str, fix: str) -> torch.nn.Module:
    """``model`` (on the meta device) with ``weights`` as its tensors, as they are; ``CheckpointError`` unless they
    fit (``check_fit``) and load."""
    try:
        model.load_state_dict(weights, assign=True)
    except (RuntimeError, ValueError) as e:  # also e.g. integer tensors where the model has parameters
        check_fit(model, weights, what, fix)
        raise CheckpointError(f'the weights do not load into {what}: {first_line(e)}') from e
    return model


def model_from_checkpoint(
        checkpoint: Checkpoint, model_name: Optional[str] = None, num_classes: Optional[int] = None,
        in_chans: Optional[int] = None, model_kwargs: Optional[Mapping[str, Any]] = None) -> ResNet:
    """The SaE model the checkpoint's weights belong to, with those weights.

    Each setting comes from the arguments, else from what the checkpoint implies (``implied_model``). The model
    is built on the meta device and takes the checkpoint's tensors as they are (dtype included).
    """
    arch, kwargs = implied_model(checkpoint, model_name)
    if twins(arch).sae != arch:
        raise CheckpointError(f'{arch} is not an SaE model; give the architecture with --model (timm-sae list)')
    kwargs.update(model_kwargs or {})
    kwargs.update({k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None})
    try:
        # the registry tag's description, license and papers are not these weights'
        model = cast(ResNet, timm.create_model(
            arch, device='meta', pretrained_cfg_overlay=dict.fromkeys(DESCRIPTIVE_CFG_KEYS), **kwargs))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{arch} cannot be built with {kwargs}: {first_line(e)}') from e
    what = f'{arch}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())})'
    fix = 'name the architecture with --model and its arguments with --num-classes / --in-chans / --model-kwargs'
    load_weights(model, checkpoint.state_dict, what, fix)
    return model.eval()


def read_label_names(path: PathLike, num_classes: int) -> List[str]:
    """Class names from a JSON list or a text file with one name a line; one name a class."""
    path = Path(path)
    try:
        text = path.read_text(encoding='utf-8')
        names = json.loads(text) if path.suffix == '.json' else [n.strip() for n in text.splitlines() if n.strip()]
    except OSError as e:
        raise CheckpointError(f'cannot read label names from {path}: {e.strerror}') from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path} is not JSON: {e}') from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f'{path} must hold a JSON list of strings, or one name a line')
    if len(names) != num_classes:
        raise CheckpointError(f'{path} has {len(names)} label names for {num_classes} classes; give one a class')
    return names


def read_export(
        path: PathLike, model_name: Optional[str] = None, use_ema: bool = False, num_classes: Optional[int] = None,
        in_chans: Optional[int] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
        label_names: Optional[PathLike] = None, allow_nonfinite: bool = False) -> Export:
    """The SaE model of a checkpoint with its weights, read and checked once, and what its export says of it.

    The arguments given override what the checkpoint implies (``implied_model``); the gate is the one train.py
    built (``train_args_gate``), the license that of the weights it started from. Weights with NaN or inf are
    refused unless ``allow_nonfinite`` (then logged).
    """
    checkpoint = read_checkpoint(path, use_ema=use_ema)
    check_finite(checkpoint.state_dict, str(path), allow_nonfinite)
    model_kwargs = {**train_args_gate(checkpoint.args), **(model_kwargs or {})}
    model = model_from_checkpoint(checkpoint, model_name, num_classes, in_chans, model_kwargs)
    return Export(
        model, {**(checkpoint.args.get('model_kwargs') or {}), **model_kwargs}, checkpoint.data_config,
        read_label_names(label_names, model.num_classes) if label_names else [], _inherited_license(checkpoint))


def sae_target(arch: str) -> str:
    """The SaE twin a source architecture (a timm model) converts into; ``CheckpointError`` when it has none."""
    plain, se, sae = twins(arch)
    if arch == sae:
        raise CheckpointError(f'{arch} is an SaE model already; export its weights with timm-sae export')
    if sae is None:
        raise CheckpointError(
            f'{arch} has no SaE twin in timm-sae; convert weights of one of timm\'s plain or SE ResNets of the '
            f'family (timm-sae list shows them)')
    return sae


def _check_timm_name(source: str) -> None:
    """Refuse, before any download, a timm name whose architecture has no SaE twin or whose tag timm lacks."""
    arch, tag = split_model_name_tag(source)
    if not timm.is_model(arch):
        raise CheckpointError(
            f'{source} is neither a file nor a timm model; give a checkpoint or a timm name with tag such as '
            f'resnet50.a1_in1k (timm.list_pretrained(\'resnet50.*\') lists them)')
    sae_target(arch)
    tags = [name.split('.', 1)[1] for name in timm.list_pretrained(f'{arch}.*')]
    if not tags:
        raise CheckpointError(
            f'timm has no pretrained weights of {arch}; give a checkpoint file of it with --model {arch}')
    if tag and tag not in tags:
        raise CheckpointError(f'timm has no tag {tag!r} of {arch}; its tags are {some_names(tags, 8)}')


# errors of reaching the Hub (huggingface_hub's, the builtin ones, and its HTTP client's transport errors by name)
_NETWORK_ERRORS = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
_NETWORK_ERROR_NAMES = {'TransportError', 'ConnectionError', 'Timeout', 'TimeoutException'}


def _load_error(source: str, error: Exception) -> str:
    """What went wrong loading ``source`` from timm; network advice only for errors of reaching the Hub."""
    if isinstance(error, _NETWORK_ERRORS) or _NETWORK_ERROR_NAMES & {c.__name__ for c in type(error).__mro__}:
        return (f'cannot load {source}: the Hugging Face Hub cannot be reached and the weights are not in its cache '
                f'({type(error).__name__}); check the network, HF_HUB_OFFLINE and HF_HUB_CACHE')
    return f'cannot load {source} ({type(error).__name__}: {first_line(error)})'


def _file_source(
        path: Path, source_model: Optional[str], use_ema: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The weights of a checkpoint of a timm plain or SE ResNet and the pretrained cfg they imply: the architecture's
    preprocessing with train.py's, its classes and input channels, and no weights' description."""
    if source_model:  # checked before the file is read
        sae_target(timm_arch(source_model))
    checkpoint = read_checkpoint(path, use_ema=use_ema)
    arch, kwargs = implied_model(checkpoint, source_model)
    sae_target(arch)
    cfg = {k: v for k, v in (get_pretrained_cfg(arch) or PretrainedCfg()).to_dict().items()
           if k not in DESCRIPTIVE_CFG_KEYS + ('hf_hub_id', 'url')}
    cfg.update(architecture=arch, **checkpoint.data_config)
    cfg.update(num_classes=kwargs['num_classes'], input_size=(kwargs['in_chans'], *cfg['input_size'][1:]))
    if source_kind(checkpoint.state_dict) != 'sae':  # checked on the meta device; SaE weights are refused later
        load_weights(timm.create_model(arch, device='meta', **kwargs), checkpoint.state_dict, arch,
                     "name the checkpoint's architecture with --model")
    return checkpoint.state_dict, cfg


def _timm_source(source: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """The weights timm loads for ``source`` (a name with tag, ``hf-hub:`` or ``local-dir:``), their pretrained cfg
    and their name."""
    if not source.startswith(('hf-hub:', 'local-dir:')):
        _check_timm_name(source)
    try:
        model = timm.create_model(source, pretrained=True)
    except Exception as e:  # Hub, cache and network failures, whichever client raised them
        raise CheckpointError(_load_error(source, e)) from e
    cfg = dict(cast(Dict[str, Any], model.pretrained_cfg))
    if source.startswith(('hf-hub:', 'local-dir:')) or not cfg.get('tag'):
        return model.state_dict(), cfg, source
    return model.state_dict(), cfg, f"{cfg['architecture']}.{cfg['tag']}"


class ConversionSource(NamedTuple):
    """Plain or SE ResNet weights to convert into their SaE twin ``target``."""
    state_dict: Dict[str, torch.Tensor]
    cfg: Dict[str, Any]  # their pretrained cfg
    name: str  # timm's name with tag, the hf-hub: id or the file's name
    kind: Literal['plain', 'se']
    target: str


def read_conversion_source(
        source: str, source_model: Optional[str] = None, use_ema: bool = False, allow_nonfinite: bool = False,
) -> ConversionSource:
    """The plain or SE ResNet weights to convert, read and checked once.

    ``source`` is a checkpoint file (architecture: ``source_model``, else what it implies; ``use_ema`` for its EMA
    weights), a timm name with tag (``resnet50.a1_in1k``: from the Hub or its cache), ``hf-hub:ORG/NAME`` or
    ``local-dir:``. Names are checked before anything is read or downloaded; SaE weights, architectures without an
    SaE twin and, unless ``allow_nonfinite``, NaN or inf are refused.
    """
    path = Path(source)
    if path.is_file() or path.suffix in ('.pth', '.tar', '.bin', '.safetensors', '.pt'):
        state_dict, cfg = _file_source(path, source_model, use_ema)
        name = path.name
    elif source_model:
        raise CheckpointError(f'--model names the architecture of a checkpoint file; {source} is not a file')
    else:
        state_dict, cfg, name = _timm_source(source)
    kind = source_kind(state_dict)
    if kind == 'sae':
        raise CheckpointError(f'{name} holds SaE weights already; export them with timm-sae export')
    target = sae_target(cfg['architecture'])
    check_finite(state_dict, name, allow_nonfinite)
    return ConversionSource(state_dict, cfg, name, kind, target)
