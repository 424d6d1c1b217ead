"""Exact warm starts: timm's plain and SE ResNet weights as SaE weights.

Paper: `Squeeze aggregated excitation network` - https://arxiv.org/abs/2308.13343

An SaE block (see ``timm_sae.squeeze_aggregated_excite``) computes ``shortcut + bn(x) * g`` with the gate
``g = 1 + s`` (residual, the default) or ``g = s`` (``sae_residual=False``). Two sources convert exactly:

* **Plain ResNet -> SaE** (either gate). With the excitation weight 0 and its bias 0, ``s = sigmoid(0) = 1/2``
  for every input, so ``g`` is the constant 3/2 (or 1/2). Dividing the weight and bias of the BatchNorm that
  feeds the SaE layer (``bn3`` of a Bottleneck, ``bn2`` of a BasicBlock) by ``g`` gives back the plain block:
  the converted model computes the source's function. The branches keep the model's own initialisation; the
  excitation weights get gradients at the first step (their input is the branches' ReLU output), so the SaE
  layers learn as soon as fine-tuning starts.
* **SE -> SaE with the plain gate.** SE computes ``sigmoid(W2 relu(W1 z + b1) + b2)`` with ``W1`` (r, C) and
  ``W2`` (C, r). ``W1, b1`` fill the first r rows of the branch matrix (output rows ``0 .. r-1``, see the layer's
  layout), ``W2`` the first r columns of the excitation, whose other columns are 0, and ``b2`` its bias. This
  needs ``k * d >= r`` (k branches of width d: C/8 >= C/16 with the defaults). An SE source cannot become a
  residual-gate SaE exactly (``1 + s > 1 > s``).

``convert_state_dict`` does either for any model of the family; ``pretrained_filter`` is the
``pretrained_filter_fn`` the entrypoints give timm, so that tags whose ``hf_hub_id`` is timm's source weights
(``conversion_cfgs``) convert while loading. SaE weights pass through unchanged. ``pretrained_gate`` picks the
gate a model is built with: the plain one where ``pretrained=True`` loads SE weights.
"""
import dataclasses
import logging
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import timm
import torch
from timm.models import (
    PretrainedCfg, get_arch_pretrained_cfgs, get_pretrained_cfg, resolve_pretrained_cfg, split_model_name_tag)
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = [
    'SAE_PAPER_ID', 'ConversionError', 'source_kind', 'Twins', 'twins', 'convert_state_dict',
    'pretrained_filter', 'converted_cfg', 'conversion_cfgs', 'twin_conversion_cfgs', 'conversion_tag',
    'no_weights_error', 'weights_location', 'loads_se_weights', 'is_non_commercial', 'pretrained_gate',
    'train_args_gate',
]

_logger = logging.getLogger(__name__)

SAE_PAPER_ID = 'arXiv:2308.13343'
EXCITATION_BIAS = 0.  # s = sigmoid(0) = 1/2: the gate's steepest point, and 1 + s = 3/2 is exact in floating point

_SAE_KEY = '.se.fc_branches.weight'
_SE_KEY = '.se.fc1.weight'


class ConversionError(ValueError):
    """Weights that cannot be converted exactly into the model; the message says what would fit."""


def source_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'sae', 'se' or 'plain': which kind of ResNet the state dict's attention keys belong to."""
    if any(k.endswith(_SAE_KEY) for k in state_dict):
        return 'sae'
    if any(k.endswith(_SE_KEY) for k in state_dict):
        return 'se'
    return 'plain'


class Twins(NamedTuple):
    """One architecture of the family under its three names; ``None`` where that model does not exist."""
    plain: Optional[str]  # timm's plain ResNet, e.g. resnet50
    se: Optional[str]  # timm's SE ResNet, e.g. seresnet50 (saeresnet26 has none)
    sae: Optional[str]  # timm-sae's SaE ResNet, e.g. saeresnet50


def twins(name: str) -> Twins:
    """The family's names of an architecture given by any of them (a tag is dropped): ``twins('seresnet50')`` is
    ``Twins('resnet50', 'seresnet50', 'saeresnet50')``. A timm name without an SaE twin gives all ``None``; an SaE
    name is taken as given (``default_cfgs`` are made before the entrypoints are registered)."""
    arch = split_model_name_tag(name)[0]
    bases = [arch[3:]] if arch.startswith('sae') else [
        arch[len(p):] for p in ('se', '') if arch.startswith(p) and timm.is_model(f'sae{arch[len(p):]}')]
    for base in bases:
        names = Twins(*(n if timm.is_model(n) else None for n in (base, f'se{base}')), f'sae{base}')
        if arch in names:
            return names
    return Twins(None, None, None)


def _sae_blocks(model: nn.Module) -> List[Tuple[str, str, SqueezeAggregatedExcitation]]:
    """(block prefix, name of the norm feeding its SaE layer, the SaE layer) of every SaE block of ``model``."""
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)) and isinstance(module.se, SqueezeAggregatedExcitation):
            blocks.append((name, 'bn3' if isinstance(module, Bottleneck) else 'bn2', module.se))
    return blocks


def _fits(model: nn.Module) -> str:
    """What converts into ``model``, for error messages."""
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    plain, se, _ = twins(arch)
    options = [f'timm\'s {plain} (plain, either gate)'] if plain else []
    if se:
        options.append(f'timm\'s {se} (SE, with sae_residual=False)')
    fits = ' or '.join(options) or 'no timm model: timm has neither a plain nor an SE twin of it'
    return f'{arch} converts from {fits}, built with the same num_classes / in_chans'


def some_names(names: Sequence[str], limit: int = 5) -> str:
    """The first few names of a list, and how many more there are."""
    shown = ', '.join(names[:limit])
    return f'{shown} (+{len(names) - limit} more)' if len(names) > limit else shown


def state_dict_mismatch(
        expected: Mapping[str, torch.Tensor],
        given: Mapping[str, torch.Tensor],
        ignore: Iterable[str] = (),
) -> str:
    """How ``given`` differs from ``expected`` in keys and shapes ('N missing (...); N mis-shaped (...)'), '' when
    it fits. Keys in ``ignore`` may differ in shape or be absent on either side."""
    ignore = set(ignore)
    missing = sorted(k for k in expected.keys() - given.keys() if k not in ignore)
    unexpected = sorted(k for k in given.keys() - expected.keys() if k not in ignore)
    misshaped = sorted(
        f'{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}'
        for k in expected.keys() & given.keys() - ignore if given[k].shape != expected[k].shape)
    return '; '.join(
        f'{len(names)} {what} ({some_names(names)})'
        for what, names in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)) if names)


def _adaptable_keys(model: nn.Module) -> List[str]:
    """State dict keys of the classifier and first conv named by the model's pretrained cfg."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    names = []
    for entry in (cfg.get('classifier'), cfg.get('first_conv')):
        names += [entry] if isinstance(entry, str) else list(entry or ())
    return [f'{name}.{p}' for name in names for p in ('weight', 'bias')]


def convert_state_dict(
        source: Mapping[str, torch.Tensor],
        model: nn.Module,
        adaptable: Optional[Iterable[str]] = None,
) -> Dict[str, torch.Tensor]:
    """A state dict for the SaE ``model`` that computes exactly what the plain or SE ``source`` computes.

    Args:
        source: state dict of a timm plain ResNet (any gate), SE ResNet (``sae_residual=False`` models) or SaE
            ResNet (returned as it is) of the model's architecture.
        model: the SaE model; its SaE branches' current values become the converted branches (except SE's rows).
        adaptable: keys whose shape may differ and pass through (default: none; ``pretrained_filter`` passes
            the classifier and first conv, which timm adapts after the filter).

    Raises:
        ConversionError: the source does not fit (keys, shapes, gate, widths); the message says what would.
    """
    kind = source_kind(source)
    if kind == 'sae':
        return dict(source)
    blocks = _sae_blocks(model)
    if not blocks:
        raise ConversionError(f'{type(model).__name__} has no SaE blocks: give an SaE model of the timm_sae family')
    target = model.state_dict()
    attention = {k for k in target if '.se.' in k}
    source_attention = {k for k in source if '.se.' in k}
    expected = {k: v for k, v in target.items() if k not in attention}
    # timm adapts the classifier and first conv (adaptable) to num_classes / in_chans after the filter
    problems = state_dict_mismatch(expected, {k: v for k, v in source.items() if k not in source_attention},
                                   adaptable or ())
    if problems:
        raise ConversionError(f'the weights do not fit: {problems}. {_fits(model)}')

    if kind == 'se':
        without_sae = sorted({k.split('.se.')[0] for k in source_attention} - {prefix for prefix, _, _ in blocks})
        if without_sae:
            raise ConversionError(
                f'the SE weights have SE layers in {some_names(without_sae)}, where the model has no SaE layer '
                f'(sae_stages): SE weights convert exactly only into SaE in every stage; leave sae_stages at its '
                f'default, or load plain weights, which convert into any sae_stages')
    converted = {k: v for k, v in source.items() if k not in source_attention}
    for prefix, norm, sae in blocks:
        layer = f'{prefix}.se.'
        branch_w, branch_b = target[layer + 'fc_branches.weight'].clone(), target[layer + 'fc_branches.bias'].clone()
        excite_w = torch.zeros_like(target[layer + 'fc_excite.weight'])
        excite_b = torch.full_like(target[layer + 'fc_excite.bias'], EXCITATION_BIAS)
        if kind == 'plain':
            gate = sae.gate(torch.tensor([EXCITATION_BIAS])).item() + (1. if sae.residual else 0.)
            if gate == 0:
                raise ConversionError(f'{layer[:-1]}: the gate is 0 at the excitation bias; no exact conversion')
            for p in ('weight', 'bias'):
                key = f'{prefix}.{norm}.{p}'
                converted[key] = source[key] / gate
        else:
            if sae.residual:
                raise ConversionError(
                    f'an SE source converts exactly only into the plain gate (1 + s > 1 > s): create the model '
                    f'with sae_residual=False. {_fits(model)}')
            se = {p: source.get(f'{layer}{p}') for p in ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias')}
            absent = [layer + p for p, v in se.items() if v is None]
            if absent:
                raise ConversionError(f'the SE weights lack {some_names(absent)}; give a complete timm SE ResNet state dict')
            reduced = se['fc1.weight'].shape[0]
            if reduced > branch_w.shape[0]:
                raise ConversionError(
                    f'{layer[:-1]}: SE reduces to {reduced} channels, the SaE branches have {branch_w.shape[0]} in '
                    f'all (cardinality x width); raise sae_cardinality or sae_rd_ratio to hold them')
            branch_w[:reduced] = se['fc1.weight'].reshape(reduced, -1)
            branch_b[:reduced] = se['fc1.bias']
            excite_w[:, :reduced] = se['fc2.weight'].reshape(excite_w.shape[0], reduced)
            excite_b = se['fc2.bias'].clone()
        converted.update({
            layer + 'fc_branches.weight': branch_w, layer + 'fc_branches.bias': branch_b,
            layer + 'fc_excite.weight': excite_w, layer + 'fc_excite.bias': excite_b,
        })
    return converted


def weights_location(cfg: Mapping[str, Any]) -> str:
    """The weights timm loads for a pretrained cfg, in timm's order (state_dict > file > hf_hub_id > url)."""
    hub = _hub_weights(cfg)
    if hub:
        return hub
    if cfg.get('state_dict') is not None:
        return 'the state dict given in the pretrained cfg'
    return f"file {cfg['file']}" if cfg.get('file') else cfg.get('url') or 'no weights'


def _hub_weights(cfg: Mapping[str, Any]) -> Optional[str]:
    """The Hub repository timm loads the cfg's weights from; None where a state dict or file comes first."""
    if cfg.get('source') == 'hf-hub':
        return cfg.get('hf_hub_id')
    if cfg.get('source') == 'local-dir' or cfg.get('state_dict') is not None or cfg.get('file'):
        return None
    return cfg.get('hf_hub_id')


def loads_se_weights(sae_arch: str, cfg: Mapping[str, Any]) -> bool:
    """Whether timm loads the cfg's weights from a repository of the SE twin's weights (``timm/seresnet50.a1_in1k``)."""
    hub, se = _hub_weights(cfg), twins(sae_arch).se
    return bool(hub and se) and split_model_name_tag(hub.rsplit('/', 1)[-1])[0] == se


def is_non_commercial(license: Optional[str]) -> bool:
    """Whether a Hub license id forbids commercial use (``cc-by-nc-4.0``, ``cc-by-nc-sa-4.0``, ...)."""
    return '-nc' in (license or '').lower()


def _license_note(cfg: Mapping[str, Any]) -> str:
    """The license of the loaded weights as the cfg knows it, saying so where it forbids commercial use."""
    if not _hub_weights(cfg) and not cfg.get('url'):
        return 'license: that of the source of these weights'
    license = cfg.get('license')
    return f'license {license or "not stated"}' + (': NON-COMMERCIAL use only' if is_non_commercial(license) else '')


def _gate_note(kind: str, residual: bool) -> str:
    """Which gate the model was built with, and why."""
    if kind == 'se':
        return 'the plain gate x * s (sae_residual=False), the only gate SE weights convert into exactly'
    return ('the residual gate x * (1 + s) (sae_residual=True, SaE\'s own)' if residual else
            'the plain gate x * s (sae_residual=False, as asked)')


def pretrained_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: convert plain or SE weights while loading, logging what was loaded.

    The log line names the weights timm loaded (``weights_location``), their license, and the gate built.
    """
    kind = source_kind(state_dict)
    if kind == 'sae':
        return state_dict
    converted = convert_state_dict(state_dict, model, adaptable=_adaptable_keys(model))
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    residual = _sae_blocks(model)[0][2].residual
    trained = ('SE\'s layers fill the first SaE branches, the other branches train when fine-tuned' if kind == 'se'
               else 'its SaE layers are untrained until fine-tuned')
    _logger.info(
        f'{cfg.get("architecture", "SaE model")}: exact conversion of {"SE" if kind == "se" else kind} ResNet weights '
        f'{weights_location(cfg)} ({_license_note(cfg)}) into {_gate_note(kind, residual)}; the model computes the '
        f'source\'s function, {trained}')
    return converted


def pretrained_gate(
        variant: str,
        sae_residual: Optional[bool],
        pretrained: bool,
        pretrained_cfg: Optional[Union[str, Dict[str, Any], PretrainedCfg]] = None,
        pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
) -> bool:
    """The ``sae_residual`` to build ``variant`` with: as given, else False where ``pretrained=True`` loads SE weights
    (the only gate they convert into exactly), else True.

    Raises:
        RuntimeError: ``pretrained=True`` and the cfg names no weights (``no_weights_error``).
        ConversionError: ``sae_residual=True`` with SE weights.
    """
    if not pretrained:
        return sae_residual is not False
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    if not (cfg.has_weights or cfg.state_dict):
        raise no_weights_error(variant)
    if not loads_se_weights(variant, vars(cfg)):
        return sae_residual is not False
    if sae_residual:
        plain = [name for name in timm.list_pretrained(f'{variant}.*')
                 if not loads_se_weights(variant, vars(get_pretrained_cfg(name)))]
        raise ConversionError(
            f'{variant}.{cfg.tag} loads SE weights ({weights_location(vars(cfg))}), which convert exactly only into '
            f'the plain gate x * s (SE\'s gate s < 1 < 1 + s): leave sae_residual unset or False'
            + (f', or load plain weights for the residual gate ({some_names(plain)})' if plain else ''))
    return False


def train_args_gate(args: Mapping[str, Any]) -> Dict[str, bool]:
    """``{'sae_residual': False}`` where timm's train.py with these ``args`` built the plain gate without being told
    (``--pretrained`` on a tag of SE weights), else ``{}``: what rebuilding its checkpoint needs."""
    if not args.get('pretrained') or args.get('pretrained_path') or 'sae_residual' in (args.get('model_kwargs') or {}):
        return {}
    arch = split_model_name_tag(args.get('model') or '')[0]
    cfg = get_pretrained_cfg(args['model']) if arch in timm.list_models(module='sae_resnet') else None
    return {'sae_residual': False} if cfg is not None and loads_se_weights(arch, vars(cfg)) else {}


def conversion_tag(source: str) -> str:
    """The SaE tag of a timm source ``arch.tag``: ``resnet50.a1_in1k`` -> ``resnet50_a1_in1k``."""
    return source.replace('.', '_')


def converted_cfg(source_cfg: Mapping[str, Any], source_name: str) -> Dict[str, Any]:
    """The pretrained cfg of the SaE conversion of the weights ``source_name`` whose cfg is ``source_cfg``.

    The source's preprocessing, classes, license, pool size and ``hf_hub_id``, with both papers and a description
    saying what the weights are.
    """
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    cfg = {k: v for k, v in source_cfg.items() if k in fields and v is not None}
    for key in ('url', 'file', 'state_dict', 'source', 'architecture', 'tag', 'custom_load'):
        cfg.pop(key, None)
    papers = cfg.get('paper_ids') or ()
    cfg['paper_ids'] = (SAE_PAPER_ID, *((papers,) if isinstance(papers, str) else papers))
    if (source_cfg.get('architecture') or '').startswith('se'):
        cfg['description'] = (
            f'Exact conversion of {source_name} (SE) to SaE with the plain gate x * s (sae_residual=False): the '
            f'source\'s function, SE\'s layers in the first SaE branches, the other branches untrained')
    else:
        cfg['description'] = f'Exact conversion of {source_name} to SaE: the source\'s function, SaE layers untrained'
    return cfg


def conversion_cfgs(sae_arch: str, source_arch: str) -> Dict[str, Dict[str, Any]]:
    """Pretrained cfgs ``{sae_arch}.{conversion_tag}`` for every weight tag timm has on the Hub for ``source_arch``.

    The source's default tag comes first, so that its conversion becomes the SaE architecture's default.
    """
    default = get_pretrained_cfg(source_arch).tag
    sources = sorted(get_arch_pretrained_cfgs(source_arch).values(), key=lambda c: c.tag != default)
    return {
        f'{sae_arch}.{conversion_tag(f"{source_arch}.{c.tag}")}': converted_cfg(c.to_dict(), f'timm\'s {source_arch}.{c.tag}')
        for c in sources if c.hf_hub_id}


def twin_conversion_cfgs(sae_arch: str) -> Dict[str, Dict[str, Any]]:
    """``conversion_cfgs`` of timm's plain twin, then of its SE twin: a plain source's default tag stays the default,
    and an SE source's default tag is the default where timm has no plain weights."""
    return {k: v for source in twins(sae_arch)[:2] if source
            for k, v in conversion_cfgs(sae_arch, source).items()}


def no_weights_error(sae_arch: str) -> RuntimeError:
    """The error of ``pretrained=True`` with a cfg that names no weights: which tags have them, if any."""
    tags = timm.list_pretrained(f'{sae_arch}.*')
    if tags:
        return RuntimeError(f'the pretrained cfg of {sae_arch} names no weights; its tags with weights: {some_names(tags)}')
    return RuntimeError(
        f'{sae_arch} has no pretrained weights: timm has no weights of its plain or SE twin to convert; '
        f'use pretrained=False')
