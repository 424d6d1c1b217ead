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

``convert_state_dict`` does either for any model of the family; SaE weights pass through unchanged. The rules of
loading pretrained weights (which weights a tag loads, the gate it builds, the filter that converts while timm
loads) sit beside the entrypoints in ``timm_sae.sae_resnet``.
"""
import importlib
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .errors import ConversionError, some_names
from .sae_resnet import source_kind, twins
from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = ['ConversionError', 'source_kind', 'state_dict_mismatch', 'convert_state_dict']

EXCITATION_BIAS = 0.  # s = sigmoid(0) = 1/2: the gate's steepest point, and 1 + s = 3/2 is exact in floating point

_SE_PARAMS = ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias')


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
            se = {p: source[layer + p] for p in _SE_PARAMS if layer + p in source}
            absent = [layer + p for p in _SE_PARAMS if p not in se]
            if absent:
                raise ConversionError(
                    f'the SE weights lack {some_names(absent)}; give a complete timm SE ResNet state dict')
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


# names that moved to the module of their one job after 0.1.0; importing them from here warns, for one release
_MOVED = {
    **dict.fromkeys((
        'SAE_PAPER_ID', 'Twins', 'conversion_tag', 'converted_cfg', 'conversion_cfgs', 'twin_conversion_cfgs',
        'pretrained_filter', 'pretrained_gate', 'no_weights_error', 'weights_location', 'loads_se_weights',
        'is_non_commercial'), 'sae_resnet'),
    'train_args_gate': 'checkpoint',
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = _MOVED[name]
    warnings.warn(
        f'timm_sae.convert.{name} is deprecated: import it from timm_sae.{module}', DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f'timm_sae.{module}'), name)
