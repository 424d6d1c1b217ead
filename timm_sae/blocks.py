# timm types a block's `aa` Optional (it is nn.Identity when off) and TorchScript reads type comments inside
# forward(), so that one mypy error code is turned off here rather than on the line:
# mypy: disable-error-code="misc"
"""The SaE blocks: timm's ``Bottleneck`` and ``BasicBlock`` with SaE's exact fast forms.

timm's SE blocks gate the block's full-width last norm output ``x = bn3(conv3(y))`` by its spatial mean.
Done as written, the squeeze reads ``x`` once more, the gate is one more pass, and in training autograd keeps
``x`` for the gate's backward: a quarter more activation memory than a plain ResNet block. The SaE blocks
compute the same function (arXiv:2308.13343 places SaE exactly where SE goes) in fewer passes:

* training: the exact tail (``timm_sae.tail.gated_tail``): BatchNorm with batch statistics, squeeze, excite,
  gate, drop_path, residual add and ReLU as two autograd Functions with the excitation's own modules between
  them, keeping only ``z = conv3(y)`` and the block's output, as the plain block does.
* eval: the squeeze from the narrow conv3 input (Bottleneck). conv3 is a 1x1, stride-1 convolution of ``y``
  (a quarter of the channels), linear per pixel, so it commutes with the spatial mean::

      mean_hw(bn3(conv3(y))) = bn3_affine(W3 @ mean_hw(y) + b3)          (BatchNorm's running statistics)

  (``fuse_batchnorm``'s folded conv3, with a bias and no bn3, is the same without the affine map). The gate
  is then folded into BatchNorm's per-channel affine (``timm_sae.tail.folded_eval_tail``): one pass over
  ``z`` before the residual add. The BasicBlock (3x3 conv2) squeezes ``z`` itself.
* anything the fast forms would hide something from, or that they do not cover: timm's own tail, with the
  narrow squeeze in eval. That is a forward hook on the SaE layer, the last norm, the activation or
  drop_path (Grad-CAM, feature extraction), a global module hook, torch.fx tracing, TorchScript, a norm
  other than ``nn.BatchNorm2d`` (or a ``SyncBatchNorm`` that syncs), an activation other than ReLU. Under
  torch.compile the training tail is traced into the graph with its backward for channels_last inputs, where
  it measured faster than timm's form left to Inductor; NCHW, where it measured slower, takes timm's form
  (``compiled_tail``; docs/speed.md). Eval leaves timm's form to Inductor, which fuses it with the narrow
  squeeze.

Every form is exact (the tests compare values, gradients and running statistics). Parameters, state dicts,
``isinstance(block, Bottleneck)`` and the forward hooks, fx nodes and feature extraction of timm's blocks are
unchanged: where something looks, ``self.se(x, z)`` runs and returns the gated map (N, C, H, W), as SE's
``self.se(x)`` does. Without autograd the layer gates in place in the block's BatchNorm output, so a
forward hook on bn3 that keeps that tensor sees it gated afterwards (clone it in the hook).
``set_fast_tail(model, False)`` gives every SaE block timm's own tail (the reference of the tests and benchmarks);
``set_triton_tail(model, True)`` the training tail's Triton kernels on CUDA (``timm_sae.tail_triton``, off by default).
"""
import importlib.util
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .tail import (
    folded_eval,
    folded_eval_tail,
    fused_tail,
    gate_of,
    gated_by_squeeze,
    gated_tail,
    running_batch_norm,
    squeeze_gate,
)


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
        and conv.padding in ((0, 0), 'valid') and conv.groups == 1
    )


def narrow_squeeze(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> Optional[torch.Tensor]:
    """``mean_hw(norm(conv(y)))``, (N, C), from the narrow ``y``; None where it does not hold (module docstring)."""
    if not isinstance(conv, nn.Conv2d) or not _is_pointwise(conv):
        return None
    batch_norm = norm if running_batch_norm(norm) else None
    if batch_norm is None and type(norm) is not nn.Identity:
        return None  # another norm, or batch statistics
    pooled = F.linear(y.mean((2, 3)), conv.weight.flatten(1), conv.bias)
    if batch_norm is None:
        return pooled  # fuse_batchnorm's folded conv3, its bias included
    return F.batch_norm(pooled, batch_norm.running_mean, batch_norm.running_var, batch_norm.weight, batch_norm.bias,
                        False, 0., batch_norm.eps)


def _compiled_tail(block: Union['GatedBottleneck', 'GatedBasicBlock'], x: torch.Tensor) -> bool:
    """Whether the training tail runs under torch.compile: the block's ``compiled_tail`` where set, else for a
    channels_last ``x`` only (measured faster than timm's form left to Inductor there, slower in NCHW)."""
    if block.compiled_tail is not None:
        return block.compiled_tail
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _fast_forms(
        block: Union['GatedBottleneck', 'GatedBasicBlock'], conv: nn.Module, norm: nn.Module, act: nn.Module,
        x: torch.Tensor, shortcut: torch.Tensor,
) -> Optional[torch.Tensor]:
    """The block's output by an exact fast form, from its last conv's input ``x``: the training tail, or in eval
    the gate folded into BatchNorm (with the narrow squeeze where the conv is pointwise); None where timm's tail
    runs (module docstring)."""
    gate = gate_of(block.se) if block.fast_tail else None
    if gate is None:
        return None
    compiled = torch.compiler.is_compiling() and _compiled_tail(block, x)  # x's strides: no torch.fx proxy
    training = fused_tail(norm, block.se, act, block.drop_path, block.training, compiled)
    if not training and not folded_eval(norm, block.se, act, block.drop_path):
        return None
    squeeze = None if training else narrow_squeeze(conv, norm, x)
    z = conv(x)
    if block.downsample is not None:
        shortcut = block.downsample(shortcut)
    if training:
        return gated_tail(z, norm, gate, shortcut, block.drop_path, block.triton_tail)
    return folded_eval_tail(z, norm, gate, shortcut, squeeze)


class GatedBottleneck(Bottleneck):
    """timm ``Bottleneck`` whose attention gates by the channel means (SaE, SE, ECA): the exact fast forms.

    ``forward`` is timm's wherever a fast form does not apply (module docstring); ``_attend`` calls the attention
    layer there as timm does.
    """

    fast_tail: bool = True  # False: timm's own tail (the reference the fast tails are exact against)
    # under torch.compile: True / False the exact training tail always / never; None: channels_last only
    compiled_tail: Optional[bool] = None
    triton_tail: bool = False  # the training tail's Triton kernels on CUDA tensors (set_triton_tail)

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
        if not torch.jit.is_scripting():
            out = _fast_forms(self, self.conv3, self.bn3, self.act3, x, shortcut)
            if out is not None:
                return out
        y = x
        x = self.conv3(x)
        x = self.bn3(x)
        x = self._attend(x, y)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act3(x)
        return x

    def _attend(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attention layer on the norm output ``x`` (``y``: conv3's input): in eval, where nothing looks at
        it, its gate from the narrow squeeze (under torch.compile, or with hooks on the norm or activation);
        else as timm calls it."""
        if not torch.jit.is_scripting() and self.fast_tail:
            gate = squeeze_gate(self.se)
            if gate is not None:
                squeeze = narrow_squeeze(self.conv3, self.bn3, y)
                if squeeze is not None:
                    return gated_by_squeeze(x, gate, squeeze)
        return self.se(x)


class SaEBottleneck(GatedBottleneck):
    """timm ``Bottleneck`` with an SaE ``attn_layer``: also the narrow squeeze where timm's tail runs."""

    def _attend(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        squeeze: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            squeeze = narrow_squeeze(self.conv3, self.bn3, y)
        return self.se(x, squeeze)


class GatedBasicBlock(BasicBlock):
    """timm ``BasicBlock`` whose attention gates by the channel means (SaE, SE, ECA): the exact fast forms."""

    fast_tail: bool = True  # False: timm's own tail (the reference the fast tails are exact against)
    # under torch.compile: True / False the exact training tail always / never; None: channels_last only
    compiled_tail: Optional[bool] = None
    triton_tail: bool = False  # the training tail's Triton kernels on CUDA tensors (set_triton_tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        if not torch.jit.is_scripting():
            out = _fast_forms(self, self.conv2, self.bn2, self.act2, x, shortcut)
            if out is not None:
                return out
        x = self.conv2(x)
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


class SaEBasicBlock(GatedBasicBlock):
    """timm ``BasicBlock`` with an SaE ``attn_layer`` and the exact fast forms."""


def _gated_blocks(model: nn.Module) -> List[Union['GatedBottleneck', 'GatedBasicBlock']]:
    return [m for m in model.modules() if isinstance(m, (GatedBottleneck, GatedBasicBlock))]


def set_fast_tail(model: nn.Module, enabled: bool) -> int:
    """Switch the gated blocks of ``model`` between the fast forms and timm's own tail; returns how many blocks."""
    blocks = _gated_blocks(model)
    for block in blocks:
        block.fast_tail = enabled
    return len(blocks)


def set_triton_tail(model: nn.Module, enabled: bool) -> int:
    """Give the gated blocks of ``model`` the training tail's Triton kernels (``timm_sae.tail_triton``) where ``z`` is
    a CUDA tensor, or take them away; returns how many blocks. Off by default until measured faster on a GPU."""
    if enabled and importlib.util.find_spec('triton') is None:
        raise RuntimeError(
            'set_triton_tail needs Triton, which comes with PyTorch\'s CUDA wheels on Linux: pip install triton')
    blocks = _gated_blocks(model)
    for block in blocks:
        block.triton_tail = enabled
    return len(blocks)
