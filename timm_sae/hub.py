"""SaE weights on the Hugging Face Hub: export a checkpoint or an exact conversion as a Hub folder, push it.

A Hub folder is what ``timm.models.save_for_hf`` writes (``model.safetensors``, ``config.json`` with
``model_args`` and ``pretrained_cfg``) plus a model card (``README.md``, ``timm_sae.cards``): after ``import
timm_sae``, ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` rebuilds the model and loads the weights.
``push_folder`` uploads it the way ``timm.models.push_to_hf_hub`` does (a README already on the Hub is kept).
Once a tag's weights are on the Hub, register it in ``default_cfgs`` of ``sae_resnet.py`` with its full
``hf_hub_id`` (timm completes only ``'timm/'``) and commit ``hub_cards/<arch>.<tag>/`` beside it.

An export goes one way: the target folder is checked, the model and what the folder says of it are read once
(``timm_sae.checkpoint``, which never unpickles freely), its parameters and GMACs counted on the meta device
(``timm_sae.measure``), its card rendered (``timm_sae.cards``), and the folder written under a temporary name and
renamed into place.
"""
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union, cast

import timm
import torch
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id
from timm.data.model_config import resolve_input_data_config
from timm.models import save_for_hf
from timm.models.resnet import ResNet

from . import cards
from .cards import CARD_NAME
from .checkpoint import (
    DESCRIPTIVE_CFG_KEYS,
    Checkpoint,
    Export,
    implied_model,
    model_from_checkpoint,
    read_checkpoint,
    read_conversion_source,
    read_export,
)
from .errors import CheckpointError, HubError, PushError, first_line
from .measure import gmacs, param_count
from .sae_resnet import SAE_PAPER_ID, converted_cfg, sae_model_args

__all__ = [
    'CONFIG_NAME', 'WEIGHTS_NAME', 'CARD_NAME', 'HubError', 'CheckpointError', 'PushError', 'Checkpoint',
    'read_checkpoint', 'implied_model', 'model_from_checkpoint', 'sae_model_args', 'save_export', 'export_checkpoint',
    'export_conversion', 'push_folder',
]

PathLike = Union[str, os.PathLike]

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)


def _export(
        load: Callable[[], Export], output_dir: PathLike, overwrite: bool,
        results: Union[None, PathLike, cards.Results] = None) -> Path:
    """Write the model that ``load`` gives as a Hub folder, ``load`` called once the target is known to be free."""
    output_dir = Path(output_dir)
    _check_target(output_dir, overwrite)
    export = load()
    model = export.model
    model_cfg = cast(Dict[str, Any], model.pretrained_cfg)
    arch, sae_args = model_cfg['architecture'], sae_model_args(export.model_args)
    input_size = tuple(resolve_input_data_config(model, args=export.data_config)['input_size'])
    params = param_count(model)
    card, results = cards.export_card(
        arch, params, gmacs(model, input_size), input_size, model.num_classes, sae_args, output_dir, results,
        export.source, export.license)
    cfg: Dict[str, Any] = {}  # what config.json's pretrained_cfg says of these weights instead of the model's cfg
    if export.source is None:
        cfg = {k: None for k in DESCRIPTIVE_CFG_KEYS if model_cfg.get(k) is not None}
        cfg.update(paper_ids=SAE_PAPER_ID, license=(results and results.license) or export.license or 'apache-2.0')
    if results is not None:
        cfg['tag'] = results.tag
    return _write_folder(export, output_dir, cfg, sae_args, card, overwrite)


def _write_folder(
        export: Export, output_dir: Path, cfg: Dict[str, Any], model_args: Dict[str, Any], card: str,
        overwrite: bool) -> Path:
    """Write the folder under a temporary name beside ``output_dir`` and rename it into place."""
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{output_dir.name}.', suffix='.tmp', dir=output_dir.parent))
    except OSError as e:
        raise CheckpointError(f'cannot create {output_dir}: {e.strerror}') from e
    try:
        save_for_hf(
            export.model, str(tmp), model_config=dict(pretrained_cfg=cfg, label_names=export.label_names),
            model_args=model_args, data_config=export.data_config, safe_serialization=True)
        # timm records num_classes and global_pool in model_args too; transformers' timm wrapper passes
        # num_classes itself and fails on a second one (see _portable_model_args)
        config = json.loads((tmp / CONFIG_NAME).read_text(encoding='utf-8'))
        config['model_args'] = _portable_model_args(config.get('model_args', {}))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding='utf-8')
        (tmp / CARD_NAME).write_text(card, encoding='utf-8')
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would keep others from reading the export
        _replace_dir(tmp, output_dir, overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, ValueError)) and not isinstance(e, HubError):
            raise CheckpointError(f'cannot write the export to {output_dir}: {first_line(e)}') from e
        raise
    return output_dir


def save_export(
        model: torch.nn.Module, output_dir: PathLike, model_args: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Mapping[str, Any]] = None, label_names: Optional[Sequence[str]] = None,
        results: Optional[cards.Results] = None, source: Optional[cards.Source] = None, license: Optional[str] = None,
        overwrite: bool = False) -> Path:
    """Write ``model`` as a Hub folder: ``model.safetensors``, ``config.json`` (``save_for_hf``), ``README.md``.

    The folder is written under a temporary name beside ``output_dir`` and renamed into place, so a failure leaves
    nothing behind; an existing ``output_dir`` is replaced only with ``overwrite``. ``results`` (a results file,
    ``timm_sae.cards``) go into the card and must describe ``model``. ``source`` marks an exact conversion
    (``export_conversion``), whose pretrained cfg (``timm_sae.sae_resnet.converted_cfg``) describes the weights;
    otherwise a registry tag's description, license and papers are replaced by the SaE paper and ``license``
    (default: the results', else apache-2.0).
    """
    return _export(
        lambda: Export(cast(ResNet, model), dict(model_args or {}), dict(data_config or {}), list(label_names or []),
                       license, source),
        output_dir, overwrite, results)


def _portable_model_args(model_args: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``model_args`` of config.json that rebuilding the model needs: no ``num_classes`` (config.json has its
    own) nor arguments equal to timm ``ResNet``'s defaults; the ``sae_*`` ones and always ``in_chans``, which
    transformers does not read from the pretrained cfg and without which timm 1.0.31's ``hf-hub:`` loading leaves
    the cfg's JSON lists as lists (a list ``input_size`` breaks benchmark.py and onnx_export.py).
    """
    defaults = {name: p.default for name, p in inspect.signature(ResNet).parameters.items()}
    return {
        k: v for k, v in model_args.items()
        if k.startswith('sae_') or k == 'in_chans' or (k != 'num_classes' and not defaults.get(k, object()) == v)}


def _check_target(output_dir: Path, overwrite: bool) -> None:
    if output_dir.is_file() or output_dir.is_symlink():
        raise CheckpointError(f'{output_dir} is a file; give the folder to export into')
    if output_dir.exists() and not overwrite:
        raise CheckpointError(f'{output_dir} exists; choose another folder or pass --overwrite to replace it')


def _replace_dir(src: Path, dst: Path, overwrite: bool) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (only with ``overwrite``) is swapped out, then deleted."""
    try:
        _check_target(dst, overwrite)  # checked before the export began: what is there now came meanwhile
        if not dst.exists():
            os.rename(src, dst)
            return
    except (CheckpointError, OSError) as e:
        if not dst.exists():
            raise
        raise CheckpointError(
            f'{dst} was created by another export while this one was written, and is kept; choose another folder '
            f'or pass --overwrite to replace it') from e
    old = Path(tempfile.mkdtemp(prefix=f'.{dst.name}.', suffix='.old', dir=dst.parent))
    os.replace(dst, old)
    try:
        os.rename(src, dst)
    except OSError:
        os.replace(old, dst)
        raise
    shutil.rmtree(old)


def export_checkpoint(
        checkpoint: PathLike, output_dir: PathLike, model_name: Optional[str] = None, use_ema: bool = False,
        num_classes: Optional[int] = None, in_chans: Optional[int] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None, label_names: Optional[PathLike] = None,
        results: Optional[PathLike] = None, overwrite: bool = False, allow_nonfinite: bool = False) -> Path:
    """Export a timm train.py checkpoint, state dict (``.pth``, ``.bin``) or ``.safetensors`` file as a Hub folder.

    The architecture, ``num_classes``, ``in_chans`` and ``model_kwargs`` (``sae_*`` ...) given override what the
    checkpoint implies (``implied_model``); ``use_ema`` exports its EMA weights. ``label_names`` is a file of class
    names (a JSON list or one a line), ``results`` a results file (``hub_cards/<arch>.<tag>/results.json``) for
    the card. Weights with NaN or inf are refused unless ``allow_nonfinite`` (then logged). See ``save_export``.
    """
    return _export(
        lambda: read_export(
            checkpoint, model_name, use_ema, num_classes, in_chans, model_kwargs, label_names, allow_nonfinite),
        output_dir, overwrite, results)


def export_conversion(
        source: str, output_dir: PathLike, source_model: Optional[str] = None, use_ema: bool = False,
        model_kwargs: Optional[Mapping[str, Any]] = None, overwrite: bool = False, allow_nonfinite: bool = False,
) -> Path:
    """Export the exact SaE conversion of plain or SE ResNet weights (``timm_sae.convert``) as a Hub folder.

    ``source`` is a timm name with tag (``resnet50.a1_in1k``, loaded with ``timm.create_model(source,
    pretrained=True)``: from the Hub or its cache), ``hf-hub:ORG/NAME``, or a checkpoint file of a timm plain or SE
    ResNet (architecture: ``source_model``, else what the checkpoint implies; ``use_ema`` for its EMA weights).
    ``model_kwargs`` are SaE arguments; an SE source defaults to ``sae_residual=False``, the only exact gate for it.
    Names are checked before anything is read or downloaded. The SaE model is built through timm's own pretrained
    loading, with the source's classes, input channels, preprocessing and license, and its SaE branches seeded
    (0), so that a conversion is reproducible. ``overwrite`` and ``allow_nonfinite`` as for ``export_checkpoint``.
    """
    return _export(lambda: _conversion(source, source_model, use_ema, model_kwargs, allow_nonfinite), output_dir,
                   overwrite)


def _conversion(
        source: str, source_model: Optional[str], use_ema: bool, model_kwargs: Optional[Mapping[str, Any]],
        allow_nonfinite: bool) -> Export:
    """The SaE model converted from ``source`` (see ``export_conversion``)."""
    weights = read_conversion_source(source, source_model, use_ema, allow_nonfinite)
    sae_kwargs = {**({'sae_residual': False} if weights.kind == 'se' else {}), **(model_kwargs or {})}
    cfg = converted_cfg(weights.cfg, weights.name)
    torch.manual_seed(0)
    try:
        model = timm.create_model(
            weights.target, pretrained=True, pretrained_cfg=cfg,
            pretrained_cfg_overlay=dict(state_dict=weights.state_dict), num_classes=cfg['num_classes'],
            in_chans=cfg['input_size'][0], **sae_kwargs)
    except (TypeError, ValueError) as e:  # ConversionError, and bad SaE arguments
        raise CheckpointError(f'{weights.name} -> {weights.target}: {first_line(e)}') from e
    return Export(cast(ResNet, model.eval()), sae_kwargs,
                  source=cards.Source.from_cfg(weights.name, weights.kind, weights.cfg))


def push_folder(
        folder: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
        revision: Optional[str] = None, create_pr: bool = False, commit_message: str = 'Add model',
        update_card: bool = False, api: Optional[HfApi] = None) -> Any:
    """Upload an exported folder (weights, config, card) to ``repo_id``; returns the Hub's commit info.

    The token is ``token``, else ``HF_TOKEN``, else the saved login. The repository is created if
    missing and the ``revision`` branch too. A README already on the Hub is kept unless
    ``update_card``. Only the export's files are uploaded; the folder is only read. ``api`` replaces
    the ``HfApi`` client.
    """
    folder = Path(folder)
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(f'{folder} lacks {", ".join(missing)}; make it with timm-sae export')
    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise PushError(f'--repo-id {repo_id!r} is not a Hub repository id: {first_line(e)}') from e
    if '/' not in repo_id:
        raise PushError(f'--repo-id {repo_id!r} needs its owner: ORG/NAME or USER/NAME')
    token = token or get_token()
    if not token:
        raise PushError('no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login` '
                        '(the token needs write access)')
    api = api or HfApi(token=token, library_name='timm', library_version=timm.__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        keep_card = not update_card and api.file_exists(repo_id, CARD_NAME, revision=revision)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision, create_pr=create_pr,
            commit_message=commit_message,
            allow_patterns=[n for n in EXPORT_FILES if not (keep_card and n == CARD_NAME)])
    except HfHubHTTPError as e:
        messages = {
            401: 'the Hub refused the token (401 Unauthorized); check --token / HF_TOKEN or log in again with '
                 '`hf auth login`',
            403: f'the token may not write to {repo_id} (403 Forbidden); use a token with write access to '
                 f'{repo_id.split("/")[0]}',
        }
        status = e.response.status_code if e.response is not None else None
        raise PushError(messages.get(status, f'the Hub refused the push to {repo_id} ({first_line(e)})')) from e
    except Exception as e:  # network and transport failures, whichever HTTP client huggingface_hub uses
        raise PushError(
            f'could not reach the Hugging Face Hub ({type(e).__name__}: {first_line(e)}); check the network '
            f'(HF_ENDPOINT, proxies, HF_HUB_OFFLINE) and push again') from e
