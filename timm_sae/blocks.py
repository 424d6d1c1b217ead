"""The SaE Bottleneck: timm's ``Bottleneck`` whose SaE layer squeezes the narrow conv3 input.

timm's SE blocks gate the block's full-width last norm output ``x = bn3(conv3(y))`` by its spatial
mean, so the squeeze costs one more read of ``x`` than a plain ResNet block. In a Bottleneck, conv3
is a 1x1, stride-1 convolution of the narrow activation ``y`` (a quarter of the channels), linear per
pixel, so it commutes with the spatial mean (arXiv:2308.13343 places SaE exactly where SE goes, so
the pooled value is the same)::

    mean_hw(bn3(conv3(y))) = bn3_affine(W3 @ mean_hw(y) + b3)          (BatchNorm's running statistics)

``fuse_batchnorm``'s folded conv3 (bias, no bn3) is the same without the affine map. Which form runs
(``narrow_squeeze``), as measured with ``benchmarks/speed.py`` against the same model with the SE form:

* eval (eager, compiled, traced, exported): the narrow form. It reads ``y`` instead of ``x`` and the
  gate is known before conv3 runs, so a compiler fuses BatchNorm, gate, residual add and activation
  into one pass over ``x``, as for a plain ResNet block.
* train: the SE form, ``mean_hw(x)`` in the SaE layer. With batch statistics the narrow form needs
  ``var_mean(conv3(y))``, which autograd cannot take from BatchNorm (its saved statistics carry no
  gradient): in eager a pass over ``x`` of its own, and compiled (where Inductor computes it in
  BatchNorm's statistics kernel) it measured 0.98 (NCHW) and 0.96 (channels_last) of the SE form's
  training throughput on the CPU.
* anything else (a norm other than BatchNorm2d / Identity, a conv3 that is not 1x1 / stride 1 /
  ungrouped, TorchScript): the SE form.

Both forms are exact (the tests compare values and gradients). Parameters, state dicts and the forward
hooks, fx nodes and feature extraction of timm's blocks are unchanged: ``self.se(x, z)`` runs and returns
the gated map (N, C, H, W), as SE's ``self.se(x)`` does. Without autograd the layer gates in place in
the block's BatchNorm output, so a forward hook on bn3 that keeps that tensor sees it gated afterwards
under ``torch.no_grad`` / ``torch.inference_mode`` (clone it in the hook).

timm's ``BasicBlock`` needs no subclass: its conv2 is 3x3, which does not commute with the mean.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.resnet import BasicBlock, Bottleneck

from .tail import Gate, folded_eval, folded_eval_tail, fused_tail, gate_of, gated_tail


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
        and conv.padding in ((0, 0), 'valid') and conv.groups == 1
    )


def narrow_squeeze(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> Optional[torch.Tensor]:
    """``mean_hw(norm(conv(y)))``, shape (N, C), from the narrow ``y``; None where the SE form runs (module docstring)."""
    if not _is_pointwise(conv) or type(norm) not in (nn.Identity, nn.BatchNorm2d, nn.SyncBatchNorm):
        return None
    if not isinstance(norm, nn.Identity) and (norm.training or norm.running_mean is None):
        return None  # batch statistics
    pooled = F.linear(y.mean((2, 3)), conv.weight.flatten(1), conv.bias)
    if isinstance(norm, nn.Identity):
        return pooled
    return F.batch_norm(pooled, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0., norm.eps)


def _gate(block: nn.Module) -> Optional[Gate]:
    """The block's gate for the fast tails, or None (timm's own tail then)."""
    return gate_of(block.se) if block.fast_tail else None


class SaEBottleneck(Bottleneck):
    """timm ``Bottleneck`` with an SaE ``attn_layer``: the narrow squeeze and the exact fast tails (module docstring)."""

    fast_tail: bool = True  # False: timm's own tail (the reference the fast tails are exact against)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        squeeze: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            gate = _gate(self)
            if gate is not None and fused_tail(self.bn3, self.se, self.act3, self.drop_path, self.training):
                z = self.conv3(x)
                if self.downsample is not None:
                    shortcut = self.downsample(shortcut)
                return gated_tail(z, self.bn3, gate, shortcut, self.drop_path)
            squeeze = narrow_squeeze(self.conv3, self.bn3, x)
            if gate is not None and folded_eval(self.bn3, self.se, self.act3, self.drop_path):
                z = self.conv3(x)
                if self.downsample is not None:
                    shortcut = self.downsample(shortcut)
                return folded_eval_tail(z, self.bn3, gate, shortcut, squeeze)
        x = self.conv3(x)
        x = self.bn3(x)
        x = self.se(x, squeeze)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act3(x)
        return x


class SaEBasicBlock(BasicBlock):
    """timm ``BasicBlock`` with an SaE ``attn_layer`` and the exact fast tails (module docstring)."""

    fast_tail: bool = True  # False: timm's own tail (the reference the fast tails are exact against)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        if not torch.jit.is_scripting():
            gate = _gate(self)
            if gate is not None and fused_tail(self.bn2, self.se, self.act2, self.drop_path, self.training):
                if self.downsample is not None:
                    shortcut = self.downsample(shortcut)
                return gated_tail(x, self.bn2, gate, shortcut, self.drop_path)
            if gate is not None and folded_eval(self.bn2, self.se, self.act2, self.drop_path):
                if self.downsample is not None:
                    shortcut = self.downsample(shortcut)
                return folded_eval_tail(x, self.bn2, gate, shortcut)
        x = self.bn2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act2(x)
        return x


def set_fast_tail(model: nn.Module, enabled: bool) -> int:
    """Switch the SaE blocks of ``model`` between the fast tails and timm's own form; returns how many blocks."""
    blocks = [m for m in model.modules() if isinstance(m, (SaEBottleneck, SaEBasicBlock))]
    for block in blocks:
        block.fast_tail = enabled
    return len(blocks)
