"""SaE-ResNet and SaE-ResNeXt: timm's ResNet family with Squeeze aggregated Excitation.

Paper: `Squeeze aggregated excitation network` - https://arxiv.org/abs/2308.13343

Each model is the twin of a timm SE-ResNet(/ResNeXt) built on timm's own ``ResNet`` class (same
stem, depths, widths, cardinality and anti-aliasing), with the SaE layer where timm puts SE
(``attn_layer`` after the block's last conv + norm, before the residual add). The plain
saeresnet26 / saeresnet26d / saeresnet50d twin timm's resnet26 / resnet26d / resnet50d.

Every entrypoint takes the SaE arguments ``sae_cardinality`` (branches k, default 4),
``sae_rd_ratio`` (branch width d / C, default 1/32), ``sae_residual`` (``x * (1 + s)``
when True, the default; SE-style ``x * s`` when False, and when unset while ``pretrained=True`` loads SE
weights, which convert exactly only into that gate) and ``sae_stages`` (the stages, numbered 1-4 as
``layer1``-``layer4``, whose blocks get SaE; default all four: the paper's placement study varies it).
The blocks of the other stages are timm's plain blocks, with the plain twin's state-dict keys.

Beside the entrypoints, as timm's model files hold theirs: the family's names (``twins``), the cfgs of the
conversion tags (every weight tag of timm's plain and SE twins) and the rules of loading pretrained weights: which
gate a tag builds (``pretrained_gate``) and the ``pretrained_filter_fn`` that converts plain and SE weights exactly
while timm loads them (the maths: ``timm_sae.convert``), logging what was loaded and its license.
"""
import dataclasses
import inspect
import logging
import os
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping, NamedTuple, Optional, Tuple, Type, Union

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    get_arch_pretrained_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
    split_model_name_tag,
)
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from .blocks import SaEBasicBlock, SaEBottleneck
from .errors import ConversionError, NoWeightsError, some_names
from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = [  # the models are reached through timm's registry
    'HUB_ORG', 'SAE_PAPER_ID', 'Twins', 'twins', 'source_kind', 'conversion_tag', 'sae_model_args', 'weights_location',
    'loads_se_weights', 'is_non_commercial', 'pretrained_filter', 'pretrained_gate', 'no_weights_error',
    'converted_cfg', 'conversion_cfgs', 'twin_conversion_cfgs',
]

_logger = logging.getLogger(__name__)

# Hub organisation of the published weights: registered tags use full ids '<HUB_ORG>/<arch>.<tag>'.
HUB_ORG = os.environ.get('TIMM_SAE_HUB_ORG', 'timm-sae')
SAE_PAPER_ID = 'arXiv:2308.13343'
# state dict keys that only an SaE model, or an SE model, has
_SAE_KEY = '.se.fc_branches.weight'
_SE_KEY = '.se.fc1.weight'


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
        plain, se = (n if timm.is_model(n) else None for n in (base, f'se{base}'))
        names = Twins(plain, se, f'sae{base}')
        if arch in names:
            return names
    return Twins(None, None, None)


def source_kind(state_dict: Mapping[str, torch.Tensor]) -> Literal['sae', 'se', 'plain']:
    """'sae', 'se' or 'plain': which kind of ResNet the state dict's attention keys belong to."""
    if any(k.endswith(_SAE_KEY) for k in state_dict):
        return 'sae'
    if any(k.endswith(_SE_KEY) for k in state_dict):
        return 'se'
    return 'plain'


def conversion_tag(source: str) -> str:
    """The SaE tag of a timm source ``arch.tag``: ``resnet50.a1_in1k`` -> ``resnet50_a1_in1k``."""
    return source.replace('.', '_')


BlockType = Union[Type[BasicBlock], Type[Bottleneck], Callable[..., nn.Module]]


def _check_stages(variant: str, sae_stages: Iterable[int], num_stages: int) -> Tuple[int, ...]:
    """``sae_stages`` as a sorted tuple of stage numbers 1..``num_stages``; a ValueError that says what fits."""
    fits = f'give stage numbers from 1 to {num_stages} (layer1..layer{num_stages}), e.g. sae_stages=(3, 4)'
    if isinstance(sae_stages, (str, bytes)) or not isinstance(sae_stages, Iterable):
        raise ValueError(f'{variant}: sae_stages must be a sequence of stage numbers, got {sae_stages!r}; {fits}')
    stages = list(sae_stages)
    if not stages:
        raise ValueError(f'{variant}: sae_stages is empty; {fits} (for no SaE at all, use timm\'s plain twin)')
    bad = [s for s in stages if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= num_stages]
    if bad:
        raise ValueError(f'{variant}: sae_stages holds {bad[0]!r}, not a stage number; {fits}')
    return tuple(sorted(set(stages)))


def _stage_blocks(block: Type[Union[BasicBlock, Bottleneck]], attn_layer: Callable[..., nn.Module],
                  stages: Tuple[int, ...], num_stages: int) -> Tuple[BlockType, ...]:
    """The block of each stage: ``block`` with SaE in ``stages``, timm's plain block of its kind elsewhere."""
    plain: BlockType = Bottleneck if issubclass(block, Bottleneck) else BasicBlock
    # timm types attn_layer as a class; any callable that builds the layer from (channels, device, dtype) will do
    with_sae = partial(block, attn_layer=attn_layer)  # type: ignore[arg-type]
    with_sae.expansion = block.expansion  # type: ignore[union-attr]  # what timm's ResNet reads of a block class
    return tuple(with_sae if stage in stages else plain for stage in range(1, num_stages + 1))


def _create_saeresnet(
        variant: str,
        pretrained: bool = False,
        sae_cardinality: int = 4,
        sae_rd_ratio: float = 1. / 32,
        sae_residual: Optional[bool] = None,
        sae_stages: Iterable[int] = (1, 2, 3, 4),
        **kwargs,
) -> ResNet:
    """Build a timm ``ResNet`` whose blocks in ``sae_stages`` use SaE as their attention layer.

    Plain and SE weights are converted exactly while loading (``timm_sae.convert.pretrained_filter``);
    ``sae_residual`` unset is True, or False where ``pretrained=True`` loads SE weights (``pretrained_gate``).
    """
    block_args = dict(kwargs.pop('block_args', None) or {})
    if 'attn_layer' in block_args:
        raise ValueError(
            f'{variant} sets block_args["attn_layer"] to SaE itself; use the sae_* arguments to '
            f'configure it, or a timm resnet for another attention layer')
    num_stages = len(kwargs['layers'])
    stages = _check_stages(variant, sae_stages, num_stages)
    sae_residual = pretrained_gate(
        variant, sae_residual, pretrained, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    # inplace: the blocks hand the layer their own fresh norm output, which nothing else holds
    sae = partial(
        SqueezeAggregatedExcitation, cardinality=sae_cardinality, rd_ratio=sae_rd_ratio, residual=sae_residual,
        inplace=True)
    block = _stage_blocks(kwargs.pop('block'), sae, stages, num_stages)
    return build_model_with_cfg(
        ResNet, variant, pretrained, pretrained_filter_fn=pretrained_filter, block=block, block_args=block_args,
        **kwargs)


def sae_model_args(model_kwargs: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The SaE entrypoint arguments (``sae_*``): their defaults updated with ``model_kwargs``; ``sae_residual``
    unset is True, the gate of a model that loads no SE weights while built."""
    defaults = {
        name: p.default for name, p in inspect.signature(_create_saeresnet).parameters.items()
        if name.startswith('sae_')}
    args = {**defaults, **{k: v for k, v in (model_kwargs or {}).items() if k.startswith('sae_')}}
    return {**args, 'sae_residual': args['sae_residual'] is not False}


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
    return hub is not None and se is not None and split_model_name_tag(hub.rsplit('/', 1)[-1])[0] == se


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


def _adaptable_keys(model: nn.Module) -> List[str]:
    """State dict keys of the classifier and first conv named by the model's pretrained cfg."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    names = []
    for entry in (cfg.get('classifier'), cfg.get('first_conv')):
        names += [entry] if isinstance(entry, str) else list(entry or ())
    return [f'{name}.{p}' for name in names for p in ('weight', 'bias')]


def pretrained_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: convert plain or SE weights while loading, logging what was loaded.

    The log line names the weights timm loaded (``weights_location``), their license, and the gate built.
    """
    from .convert import convert_state_dict  # the maths name the family's twins in their errors

    kind = source_kind(state_dict)
    if kind == 'sae':
        return state_dict
    converted = convert_state_dict(state_dict, model, adaptable=_adaptable_keys(model))
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    residual = next(m.residual for m in model.modules() if isinstance(m, SqueezeAggregatedExcitation))
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
        pretrained_cfg: Optional[Union[str, Dict[str, Any]]] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> bool:
    """The ``sae_residual`` to build ``variant`` with: as given, else False where ``pretrained=True`` loads SE weights
    (the only gate they convert into exactly), else True.

    Raises:
        NoWeightsError: ``pretrained=True`` and the cfg names no weights (``no_weights_error``).
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


def no_weights_error(sae_arch: str) -> NoWeightsError:
    """The error of ``pretrained=True`` with a cfg that names no weights: which tags have them, if any."""
    tags = timm.list_pretrained(f'{sae_arch}.*')
    if tags:
        return NoWeightsError(
            f'the pretrained cfg of {sae_arch} names no weights; its tags with weights: {some_names(tags)}')
    return NoWeightsError(
        f'{sae_arch} has no pretrained weights: timm has no weights of its plain or SE twin to convert; '
        f'use pretrained=False')


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': SAE_PAPER_ID,
        **kwargs,
    }


def _deep_stem_cfg(**kwargs) -> Dict[str, Any]:
    """Config for the deep ('d', 't') stems, whose first conv is ``conv1.0``."""
    return _cfg(first_conv='conv1.0', **kwargs)


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
    default = (get_pretrained_cfg(source_arch) or PretrainedCfg()).tag
    sources = sorted(get_arch_pretrained_cfgs(source_arch).values(), key=lambda c: c.tag != default)
    return {
        f'{sae_arch}.{conversion_tag(f"{source_arch}.{c.tag}")}':
            converted_cfg(c.to_dict(), f'timm\'s {source_arch}.{c.tag}')
        for c in sources if c.hf_hub_id}


def twin_conversion_cfgs(sae_arch: str) -> Dict[str, Dict[str, Any]]:
    """``conversion_cfgs`` of timm's plain twin, then of its SE twin: a plain source's default tag stays the default,
    and an SE source's default tag is the default where timm has no plain weights."""
    return {k: v for source in twins(sae_arch)[:2] if source
            for k, v in conversion_cfgs(sae_arch, source).items()}


# Tags: every weight tag timm has for an architecture's plain twin, then for its SE twin, converted exactly while
# loading (see pretrained_filter); the plain twin's default tag is the default, else the SE twin's. The two
# architectures without weights of either twin in timm are untrained.
default_cfgs = generate_default_cfgs({
    **twin_conversion_cfgs('saeresnet18'),
    **twin_conversion_cfgs('saeresnet26'),
    **twin_conversion_cfgs('saeresnet26d'),
    **twin_conversion_cfgs('saeresnet34'),
    **twin_conversion_cfgs('saeresnet50'),
    **twin_conversion_cfgs('saeresnet50d'),
    'saeresnet50t.untrained': _deep_stem_cfg(),
    **twin_conversion_cfgs('saeresnet101'),
    **twin_conversion_cfgs('saeresnet152'),
    **twin_conversion_cfgs('saeresnet152d'),
    **twin_conversion_cfgs('saeresnet200d'),
    'saeresnet269d.untrained': _deep_stem_cfg(),
    **twin_conversion_cfgs('saeresnetaa50d'),
    **twin_conversion_cfgs('saeresnext26d_32x4d'),
    **twin_conversion_cfgs('saeresnext26t_32x4d'),
    **twin_conversion_cfgs('saeresnext50_32x4d'),
    **twin_conversion_cfgs('saeresnext101_32x4d'),
    **twin_conversion_cfgs('saeresnext101_32x8d'),
    **twin_conversion_cfgs('saeresnext101_64x4d'),
    **twin_conversion_cfgs('saeresnext101d_32x8d'),
    **twin_conversion_cfgs('saeresnextaa101d_32x8d'),
    **twin_conversion_cfgs('saeresnextaa201d_32x8d'),
})


@register_model
def saeresnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-18, twin of seresnet18: basic blocks (2, 2, 2, 2), 7x7 stem."""
    model_args = dict(block=SaEBasicBlock, layers=(2, 2, 2, 2))
    return _create_saeresnet('saeresnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-26, twin of resnet26 (timm has no SE version): bottlenecks (2, 2, 2, 2), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(2, 2, 2, 2))
    return _create_saeresnet('saeresnet26', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet26d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-26-D, twin of resnet26d: bottlenecks (2, 2, 2, 2), deep 32-32-64 stem, avg-pool downsample."""
    model_args = dict(block=SaEBottleneck, layers=(2, 2, 2, 2), stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnet26d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-34, twin of seresnet34: basic blocks (3, 4, 6, 3), 7x7 stem."""
    model_args = dict(block=SaEBasicBlock, layers=(3, 4, 6, 3))
    return _create_saeresnet('saeresnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-50, twin of seresnet50: bottlenecks (3, 4, 6, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 6, 3))
    return _create_saeresnet('saeresnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet50d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-50-D, twin of resnet50d: bottlenecks (3, 4, 6, 3), deep 32-32-64 stem, avg-pool downsample."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 6, 3), stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnet50d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet50t(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-50-T, twin of seresnet50t: bottlenecks (3, 4, 6, 3), tiered deep stem, avg-pool downsample."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 4, 6, 3), stem_width=32, stem_type='deep_tiered', avg_down=True)
    return _create_saeresnet('saeresnet50t', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-101, twin of seresnet101: bottlenecks (3, 4, 23, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 23, 3))
    return _create_saeresnet('saeresnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-152, twin of seresnet152: bottlenecks (3, 8, 36, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 8, 36, 3))
    return _create_saeresnet('saeresnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet152d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-152-D, twin of seresnet152d: bottlenecks (3, 8, 36, 3), deep stem, avg-pool downsample."""
    model_args = dict(block=SaEBottleneck, layers=(3, 8, 36, 3), stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnet152d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet200d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-200-D, twin of seresnet200d: bottlenecks (3, 24, 36, 3), deep stem, avg-pool downsample."""
    model_args = dict(block=SaEBottleneck, layers=(3, 24, 36, 3), stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnet200d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnet269d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-269-D, twin of seresnet269d: bottlenecks (3, 30, 48, 8), deep stem, avg-pool downsample."""
    model_args = dict(block=SaEBottleneck, layers=(3, 30, 48, 8), stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnet269d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnetaa50d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNet-50-D with avg-pool anti-aliasing, twin of seresnetaa50d: bottlenecks (3, 4, 6, 3), deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 4, 6, 3), aa_layer=nn.AvgPool2d,
        stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnetaa50d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext26d_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-26-D 32x4d, twin of seresnext26d_32x4d: bottlenecks (2, 2, 2, 2), deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(2, 2, 2, 2), cardinality=32, base_width=4,
        stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnext26d_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext26t_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-26-T 32x4d, twin of seresnext26t_32x4d: bottlenecks (2, 2, 2, 2), tiered deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(2, 2, 2, 2), cardinality=32, base_width=4,
        stem_width=32, stem_type='deep_tiered', avg_down=True)
    return _create_saeresnet('saeresnext26t_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext50_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-50 32x4d, twin of seresnext50_32x4d: bottlenecks (3, 4, 6, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4)
    return _create_saeresnet('saeresnext50_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext101_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-101 32x4d, twin of seresnext101_32x4d: bottlenecks (3, 4, 23, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=4)
    return _create_saeresnet('saeresnext101_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext101_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-101 32x8d, twin of seresnext101_32x8d: bottlenecks (3, 4, 23, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=8)
    return _create_saeresnet('saeresnext101_32x8d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext101_64x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-101 64x4d, twin of seresnext101_64x4d: bottlenecks (3, 4, 23, 3), 7x7 stem."""
    model_args = dict(block=SaEBottleneck, layers=(3, 4, 23, 3), cardinality=64, base_width=4)
    return _create_saeresnet('saeresnext101_64x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnext101d_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-101-D 32x8d, twin of seresnext101d_32x8d: bottlenecks (3, 4, 23, 3), deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=8,
        stem_width=32, stem_type='deep', avg_down=True)
    return _create_saeresnet('saeresnext101d_32x8d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnextaa101d_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-101-D 32x8d with avg-pool anti-aliasing, twin of seresnextaa101d_32x8d: (3, 4, 23, 3)."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=8,
        stem_width=32, stem_type='deep', avg_down=True, aa_layer=nn.AvgPool2d)
    return _create_saeresnet('saeresnextaa101d_32x8d', pretrained, **dict(model_args, **kwargs))


@register_model
def saeresnextaa201d_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """SaE-ResNeXt-201-D 32x8d with avg-pool anti-aliasing, twin of seresnextaa201d_32x8d: (3, 24, 36, 4),
    64-wide deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 24, 36, 4), cardinality=32, base_width=8,
        stem_width=64, stem_type='deep', avg_down=True, aa_layer=nn.AvgPool2d)
    return _create_saeresnet('saeresnextaa201d_32x8d', pretrained, **dict(model_args, **kwargs))
