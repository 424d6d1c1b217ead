"""timm ResNet blocks whose tail applies the SaE gate without allocating a new tensor.

timm's ``BasicBlock`` / ``Bottleneck`` end with ``x = attn(x); x += shortcut``: the gate allocates
a new tensor for ``x * s`` (on the CPU, fresh large allocations cost page faults on top of the
pass), then the add makes another pass. With SaE the gate is a per-channel multiplier, so when
autograd does not need the tail (inference) it is computed in place in the block's own
normalisation output: ``x *= scale; x += shortcut``, the same operations in the same order as the
autograd path, so both give bit-identical results. With autograd the tail is SE's
``x * scale; += shortcut`` (``addcmul`` would save a forward pass, but its backward makes an extra
pass over ``x``). Under ``torch.compile`` it is the plain expression ``shortcut + x * scale``,
which the compiler fuses itself. Stochastic depth (timm's per-sample ``DropPath``) is applied to
the (N, C, 1, 1) multiplier, which gives the same result as applying it to ``x * scale``.

Only ``forward`` changes: parameters, state dicts, ``feature_info`` and everything else are
timm's. One consequence of writing in place: a forward hook on the block's last norm layer that
keeps the tensor sees it overwritten under ``torch.no_grad`` / ``torch.inference_mode``.
"""
import torch
from timm.layers import register_notrace_function
from timm.models.resnet import BasicBlock, Bottleneck


@register_notrace_function
def gated_residual_add(x: torch.Tensor, scale: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``shortcut + x * scale``, in place into ``x`` when no input needs a gradient."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_compiling():
            return shortcut + x * scale
    if x.requires_grad or scale.requires_grad or shortcut.requires_grad:
        out = x * scale
        out += shortcut
        return out
    return x.mul_(scale).add_(shortcut)


class _GatedResidualTail:
    """Mixin: the block tail ``shortcut + x * scale`` (see module docstring)."""

    def gated_residual(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        scale = self.se.scale(x)
        if self.drop_path is not None:
            scale = self.drop_path(scale)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return gated_residual_add(x, scale, shortcut)


class SaEBasicBlock(_GatedResidualTail, BasicBlock):
    """timm ``BasicBlock`` with an SaE ``attn_layer`` and the fused gate + residual tail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        return self.act2(self.gated_residual(x, shortcut))


class SaEBottleneck(_GatedResidualTail, Bottleneck):
    """timm ``Bottleneck`` with an SaE ``attn_layer`` and the fused gate + residual tail."""

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
        x = self.conv3(x)
        x = self.bn3(x)
        return self.act3(self.gated_residual(x, shortcut))
