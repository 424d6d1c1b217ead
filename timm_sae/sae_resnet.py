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
"""
import os
from functools import partial
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Type, Union

from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .blocks import SaEBasicBlock, SaEBottleneck
from .convert import SAE_PAPER_ID, pretrained_filter, pretrained_gate, twin_conversion_cfgs
from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = []  # models are reached through timm's registry

# Hub organisation of the published weights: registered tags use full ids '<HUB_ORG>/<arch>.<tag>'.
HUB_ORG = os.environ.get('TIMM_SAE_HUB_ORG', 'timm-sae')


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


def _stage_blocks(block: BlockType, attn_layer: Callable[..., nn.Module], stages: Tuple[int, ...],
                  num_stages: int) -> Tuple[BlockType, ...]:
    """The block of each stage: ``block`` with SaE in ``stages``, timm's plain block of its kind elsewhere."""
    plain = Bottleneck if issubclass(block, Bottleneck) else BasicBlock
    with_sae = partial(block, attn_layer=attn_layer)
    with_sae.expansion = block.expansion  # what timm's ResNet reads of a block class
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


# Tags: every weight tag timm has for an architecture's plain twin, then for its SE twin, converted exactly while
# loading (see timm_sae.convert); the plain twin's default tag is the default, else the SE twin's. The two
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
    """SaE-ResNeXt-201-D 32x8d with avg-pool anti-aliasing, twin of seresnextaa201d_32x8d: (3, 24, 36, 4), 64-wide deep stem."""
    model_args = dict(
        block=SaEBottleneck, layers=(3, 24, 36, 4), cardinality=32, base_width=8,
        stem_width=64, stem_type='deep', avg_down=True, aa_layer=nn.AvgPool2d)
    return _create_saeresnet('saeresnextaa201d_32x8d', pretrained, **dict(model_args, **kwargs))
