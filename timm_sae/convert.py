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
(``conversion_cfgs``) convert while loading. SaE weights pass through unchanged.
"""
import dataclasses
import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from timm.models import PretrainedCfg, get_arch_pretrained_cfgs, get_pretrained_cfg
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = [
    'SAE_PAPER_ID', 'ConversionError', 'source_kind', 'plain_twin', 'se_source', 'sae_twin', 'convert_state_dict',
    'pretrained_filter', 'converted_cfg', 'conversion_cfgs', 'conversion_tag', 'no_weights_error',
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


def plain_twin(sae_arch: str) -> Optional[str]:
    """timm's plain ResNet of the SaE architecture (``saeresnet50`` -> ``resnet50``), if timm has it."""
    name = sae_arch.replace('sae', '', 1)
    return name if timm.is_model(name) else None


def se_source(sae_arch: str) -> Optional[str]:
    """timm's SE ResNet of the SaE architecture (``saeresnet50`` -> ``seresnet50``), if timm has it."""
    name = sae_arch.replace('sae', 'se', 1)
    return name if timm.is_model(name) else None


def sae_twin(source_arch: str) -> Optional[str]:
    """The SaE architecture a timm plain or SE ResNet converts into (``resnet50``, ``seresnet50`` -> ``saeresnet50``)."""
    name = 'sae' + (source_arch[2:] if source_arch.startswith('se') else source_arch)
    return name if name in timm.list_models(module='sae_resnet') else None


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
    plain, se = plain_twin(arch), se_source(arch)
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


def pretrained_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: convert plain or SE weights while loading, logging what was loaded."""
    kind = source_kind(state_dict)
    if kind == 'sae':
        return state_dict
    converted = convert_state_dict(state_dict, model, adaptable=_adaptable_keys(model))
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    source = cfg.get('hf_hub_id') or cfg.get('file') or cfg.get('url') or 'the given state dict'
    _logger.info(
        f'{cfg.get("architecture", "SaE model")}: exact conversion of {kind} ResNet weights ({source}); the model '
        f'computes the source\'s function, and its SaE layers are untrained until fine-tuned')
    return converted


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


def no_weights_error(sae_arch: str) -> RuntimeError:
    """The error of ``pretrained=True`` where no tag has weights: which exact conversion exists instead."""
    se = se_source(sae_arch)
    se_tags = timm.list_pretrained(f'{se}.*') if se else []
    text = f'{sae_arch} has no pretrained weights: timm has no weights of its plain twin to convert'
    if not se_tags:
        return RuntimeError(f'{text}, nor of an SE twin; use pretrained=False')
    return RuntimeError(
        f'{text}. timm\'s SE twin converts exactly into the plain gate (sae_residual=False): '
        f'`timm-sae convert {se_tags[0]} OUTPUT_DIR` writes a Hub folder, or load it directly with '
        f'timm.create_model(\'{sae_arch}\', pretrained=True, sae_residual=False, '
        f'pretrained_cfg_overlay=dict(hf_hub_id=\'{get_pretrained_cfg(se_tags[0]).hf_hub_id}\')) '
        f'(SE weights: {", ".join(se_tags)})')
