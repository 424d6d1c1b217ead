"""The SaE Bottleneck: timm's ``Bottleneck`` whose SaE layer squeezes the narrow conv3 input.

timm's SE blocks gate the block's full-width last norm output ``x = bn3(conv3(y))`` by its spatial
mean, so the squeeze costs one more read of ``x`` than a plain ResNet block. In a Bottleneck, conv3
is a 1x1, stride-1 convolution of the narrow activation ``y`` (a quarter of the channels), linear per
pixel, so it commutes with the spatial mean (arXiv:2308.13343 places SaE exactly where SE goes, so
the pooled value is the same)::

    eval:   mean_hw(bn3(conv3(y))) = bn3_affine(W3 @ mean_hw(y) + b3)          (running statistics)
    train:  mean_hw(bn3(conv3(y))) = gamma * (W3 @ mean_hw(y) - mu_B) / sqrt(var_B + eps) + beta

with ``mu_B``, ``var_B`` the (biased) batch statistics of ``conv3(y)`` that BatchNorm normalises with;
``fuse_batchnorm``'s folded conv3 (bias, no bn3) is the first form without the affine map. Which form
runs (``narrow_squeeze``):

* eval (eager, compiled, traced, exported): the narrow form. It reads ``y`` instead of ``x`` and
  needs no BatchNorm statistics, so the gate is known before conv3 runs.
* train under ``torch.compile``: the narrow form, its batch statistics one ``var_mean`` of
  ``conv3(y)`` in the computation dtype, as Inductor's BatchNorm decomposition takes them, so the
  compiler computes them once for both.
* train in eager: the SE form, ``mean_hw(x)`` in the SaE layer. There ``var_mean`` would be a pass over
  ``x`` of its own, with a full-width backward (autograd cannot use the statistics that BatchNorm
  saves: they carry no gradient).
* anything else (a norm other than BatchNorm2d / Identity, SyncBatchNorm in training, a conv3 that is
  not 1x1 / stride 1 / ungrouped, TorchScript): the SE form.

Every form is exact (the tests compare them with the reference formula, values and gradients).
Parameters, state dicts and the forward hooks, fx nodes and feature extraction of timm's blocks are
unchanged: ``self.se(x, z)`` runs and returns the gated map (N, C, H, W), as SE's ``self.se(x)`` does.

timm's ``BasicBlock`` needs no subclass: its conv2 is 3x3, which does not commute with the mean.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.resnet import Bottleneck


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
        and conv.padding in ((0, 0), 'valid') and conv.groups == 1
    )


def narrow_squeeze(conv: nn.Module, norm: nn.Module, y: torch.Tensor, conv_out: torch.Tensor) -> Optional[torch.Tensor]:
    """``mean_hw(norm(conv(y)))``, shape (N, C), from the narrow ``y``; None where the SE form runs.

    ``conv_out`` is ``conv(y)``, read only for the batch statistics in compiled training (see module docstring).
    """
    if not _is_pointwise(conv) or type(norm) not in (nn.Identity, nn.BatchNorm2d, nn.SyncBatchNorm):
        return None
    batch_stats = not isinstance(norm, nn.Identity) and (norm.training or norm.running_mean is None)
    if batch_stats and (type(norm) is nn.SyncBatchNorm or not torch.compiler.is_compiling()):
        return None
    pooled = F.linear(y.mean((2, 3)), conv.weight.flatten(1), conv.bias)
    if isinstance(norm, nn.Identity):
        return pooled
    if not batch_stats:
        return F.batch_norm(pooled, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0., norm.eps)
    compute_dtype = torch.promote_types(conv_out.dtype, torch.float32)
    var, mean = torch.var_mean(conv_out.to(compute_dtype), dim=[0, 2, 3], correction=0, keepdim=True)
    pooled = (pooled - mean.flatten()) * torch.rsqrt(var.flatten() + norm.eps)
    return pooled if norm.weight is None else pooled * norm.weight + norm.bias


class SaEBottleneck(Bottleneck):
    """timm ``Bottleneck`` with an SaE ``attn_layer`` that squeezes the narrow conv3 input (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        y = self.aa(x)
        x = self.conv3(y)
        z: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            z = narrow_squeeze(self.conv3, self.bn3, y, x)
        x = self.bn3(x)
        x = self.se(x, z)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act3(x)
        return x
