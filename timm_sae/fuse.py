"""Inference-time BatchNorm folding for timm ResNets (SaE, SE, plain, ResNeXt).

``fuse_batchnorm(model)`` returns an equivalent eval-mode copy in which every BatchNorm that directly
follows a convolution is folded into that convolution's weight and bias (torch's
``fuse_conv_bn_eval``) and replaced by ``nn.Identity``. The original model is left untouched.

A pair is folded only where the conv output feeds nothing but the BatchNorm, which in timm's
``ResNet`` is:

* the stem: ``conv1`` + ``bn1``, or the last conv of a deep stem (``conv1`` is a Sequential) +
  ``bn1``, and the conv-bn pairs inside the deep stem;
* every ``BasicBlock`` / ``Bottleneck`` (and subclasses such as the SaE blocks): ``conv_k`` +
  ``bn_k``; anti-aliasing and DropBlock sit after the BatchNorm there, so the pairs stay adjacent;
* every plain ``nn.Sequential`` with a conv immediately followed by a BatchNorm: downsample paths
  (``avg_down`` included, the pool comes before the conv) and ``replace_stem_pool`` stems.

A BatchNorm with anything in between (e.g. ``replace_stem_pool`` with ``aa_layer``: conv, pool, bn)
is left as it is; ``strict=True`` turns that into an error. Only plain ``nn.Conv2d`` and
``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` with running statistics are folded: subclasses that change
the forward (timm's ``BatchNormAct2d``, weight-standardised convs) are not. The result is for
inference only: its state dict no longer matches the unfused model's.
"""
import copy
from typing import List, Tuple

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['fuse_batchnorm']

# (module holding the conv, its attribute name, module holding the BN, its attribute name)
_Pair = Tuple[nn.Module, str, nn.Module, str]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm)
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def _adjacent_pairs(module: nn.Module) -> List[_Pair]:
    """The conv -> BN pairs that ``module``'s own forward applies back to back."""
    if type(module) is nn.Sequential:  # subclasses may wire their children otherwise
        names = list(module._modules)
        return [(module, a, module, b) for a, b in zip(names[:-1], names[1:], strict=False)]
    if isinstance(module, (BasicBlock, Bottleneck)):
        return [(module, f'conv{i}', module, f'bn{i}') for i in (1, 2, 3) if hasattr(module, f'bn{i}')]
    if isinstance(module, ResNet):
        if isinstance(module.conv1, nn.Sequential):  # deep stem: its last conv feeds bn1
            return [(module.conv1, list(module.conv1._modules)[-1], module, 'bn1')]
        return [(module, 'conv1', module, 'bn1')]
    return []


def fuse_batchnorm(model: nn.Module, strict: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the conv before it.

    Args:
        model: a timm ResNet (or any module built from them) in eval mode.
        strict: raise if a BatchNorm is left that could not be folded.

    Returns:
        The fused copy; ``model`` itself is not modified.
    """
    if model.training:
        raise RuntimeError(
            'fuse_batchnorm folds the BatchNorm running statistics and is for inference only: '
            'call model.eval() first')
    fused = copy.deepcopy(model)
    pairs = [
        pair for module in fused.modules() for pair in _adjacent_pairs(module)
        if _foldable(getattr(pair[0], pair[1]), getattr(pair[2], pair[3]))
    ]
    for conv_parent, conv_name, bn_parent, bn_name in pairs:
        conv, bn = getattr(conv_parent, conv_name), getattr(bn_parent, bn_name)
        setattr(conv_parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_parent, bn_name, nn.Identity())
    if strict:
        left = [name for name, m in fused.named_modules() if isinstance(m, _BatchNorm)]
        if left:
            raise ValueError(f'fuse_batchnorm(strict=True): BatchNorm not directly after a conv: {left}')
    return fused
