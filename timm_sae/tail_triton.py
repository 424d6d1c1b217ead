"""Triton kernels for the exact training tail (``timm_sae.tail``), for CUDA tensors; off by default.

``set_triton_tail(model, True)`` (``timm_sae.blocks``) makes the gated blocks' training tail take them where ``z``
is a CUDA tensor (elsewhere, and under torch.compile, the PyTorch forms run). Per block they read and write::

    forward   sample_moments            reads z twice (the per-(n, c) mean, then the spread about it)
              gated_norm_act            reads z and the shortcut, writes out = relu(z a + b + shortcut)
    backward  gated_norm_act_backward   reads dout, out and z, writes g = dout [out > 0] (the shortcut's gradient)
                                        and g a (z's); sums g and g (z - mu)

with per-(n, c) ``a``, ``b`` and per-channel ``mu`` from the tail's small tensors. The statistics' share of z's
gradient (``c1 z + c0``) stays one PyTorch pass, as it is without them. Every sum is accumulated in fp32 (fp64
for fp64), and the per-(n, c) variance is taken about the sample's mean, so a channel whose mean is large
against its spread keeps its digits. Under ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors: the
tests check them there against the PyTorch forms. They stay off by default until a GPU run measures them
faster (``benchmarks/gpu_run.sh`` times both).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from triton import knobs

__all__ = ['runs_on', 'sample_moments', 'gated_norm_act', 'gated_norm_act_backward']


def runs_on(z: torch.Tensor) -> bool:
    """Whether the kernels run on ``z``'s device: CUDA, or any device under ``TRITON_INTERPRET=1``."""
    return z.is_cuda or bool(knobs.runtime.interpret)


def _accumulator(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _merged(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, H, W) where H and W merge into one strided pixel dimension (NCHW, channels_last, a broadcast),
    else a contiguous copy."""
    return t.contiguous() if t.shape[2] > 1 and t.stride(2) != t.shape[3] * t.stride(3) else t


def _strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(sample, channel, pixel) strides of a ``_merged`` tensor."""
    return t.stride(0), t.stride(1), t.stride(3)


TILE = 4096  # elements a program covers at most


def _blocks(t: torch.Tensor) -> Tuple[int, int]:
    """(channels, pixels) a program covers, the contiguous dimension of the layout first."""
    channels, pixels = triton.next_power_of_2(t.shape[1]), triton.next_power_of_2(t.shape[2] * t.shape[3])
    if t.stride(3) == 1 and pixels > 1:  # NCHW: pixels contiguous
        block_hw = min(1024, pixels)
        return min(channels, TILE // block_hw), block_hw
    block_c = min(128, channels)
    return block_c, min(pixels, TILE // block_c)


@triton.jit
def _sample_moments_kernel(
        z_ptr, mean_ptr, var_ptr, C, HW, stride_n, stride_c, stride_hw,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    rows = z_ptr + n * stride_n + channels[:, None] * stride_c
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        pixels = start + tl.arange(0, BLOCK_HW)
        mask = channel_mask[:, None] & (pixels[None, :] < HW)
        total += tl.sum(tl.load(rows + pixels[None, :] * stride_hw, mask=mask, other=0.).to(ACC), axis=1)
    mean = total / HW
    spread = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        pixels = start + tl.arange(0, BLOCK_HW)
        mask = channel_mask[:, None] & (pixels[None, :] < HW)
        x = tl.load(rows + pixels[None, :] * stride_hw, mask=mask, other=0.).to(ACC)
        centred = tl.where(mask, x - mean[:, None], 0.)
        spread += tl.sum(centred * centred, axis=1)
    tl.store(mean_ptr + n * C + channels, mean, mask=channel_mask)
    tl.store(var_ptr + n * C + channels, spread / HW, mask=channel_mask)


def sample_moments(z: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) spatial mean and biased variance of ``z`` (N, C, H, W), each (N, C) in ``dtype`` (fp32 or fp64)."""
    n, c, h, w = z.shape
    z = _merged(z)
    mean = torch.empty((n, c), dtype=dtype, device=z.device)
    var = torch.empty_like(mean)
    block_c, block_hw = _blocks(z)
    _sample_moments_kernel[(n, triton.cdiv(c, block_c))](
        z, mean, var, c, h * w, *_strides(z), BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=_accumulator(dtype))
    return mean, var


@triton.jit
def _gated_norm_act_kernel(
        z_ptr, shortcut_ptr, out_ptr, a_ptr, b_ptr, C, HW,
        z_sn, z_sc, z_shw, s_sn, s_sc, s_shw, o_sn, o_sc, o_shw,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixels = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    channel_mask = channels < C
    mask = channel_mask[:, None] & (pixels[None, :] < HW)
    a = tl.load(a_ptr + n * C + channels, mask=channel_mask, other=0.).to(ACC)
    b = tl.load(b_ptr + n * C + channels, mask=channel_mask, other=0.).to(ACC)
    z = tl.load(z_ptr + n * z_sn + channels[:, None] * z_sc + pixels[None, :] * z_shw, mask=mask, other=0.)
    shortcut = tl.load(
        shortcut_ptr + n * s_sn + channels[:, None] * s_sc + pixels[None, :] * s_shw, mask=mask, other=0.)
    y = z.to(ACC) * a[:, None] + b[:, None] + shortcut.to(ACC)
    y = tl.where(y < 0., 0., y)  # relu, NaN kept as torch.relu keeps it
    tl.store(out_ptr + n * o_sn + channels[:, None] * o_sc + pixels[None, :] * o_shw,
             y.to(out_ptr.dtype.element_ty), mask=mask)


def gated_norm_act(
        z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, shortcut: torch.Tensor, dtype: torch.dtype,
) -> torch.Tensor:
    """``relu(z a + b + shortcut)``, per-(n, c) ``a`` and ``b`` (N, C), in one pass; stored as ``dtype`` in z's
    layout."""
    n, c, h, w = z.shape
    z, shortcut = _merged(z), _merged(shortcut.expand_as(z))
    out = torch.empty_like(z, dtype=dtype)
    block_c, block_hw = _blocks(z)
    _gated_norm_act_kernel[(n, triton.cdiv(c, block_c), triton.cdiv(h * w, block_hw))](
        z, shortcut, out, a.contiguous(), b.contiguous(), c, h * w, *_strides(z), *_strides(shortcut), *_strides(out),
        BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=_accumulator(a.dtype))
    return out


@triton.jit
def _gated_norm_act_backward_kernel(
        dout_ptr, out_ptr, z_ptr, g_ptr, dz_ptr, a_ptr, mu_ptr, g_sum_ptr, centred_sum_ptr, C, HW,
        d_sn, d_sc, d_shw, o_sn, o_sc, o_shw, z_sn, z_sc, z_shw, g_sn, g_sc, g_shw, dz_sn, dz_sc, dz_shw,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    mu = tl.load(mu_ptr + channels, mask=channel_mask, other=0.).to(ACC)
    a = tl.load(a_ptr + n * C + channels, mask=channel_mask, other=0.).to(ACC)
    g_total = tl.zeros([BLOCK_C], dtype=ACC)
    centred_total = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(0, HW, BLOCK_HW):
        pixels = start + tl.arange(0, BLOCK_HW)
        mask = channel_mask[:, None] & (pixels[None, :] < HW)
        dout = tl.load(dout_ptr + n * d_sn + channels[:, None] * d_sc + pixels[None, :] * d_shw, mask=mask, other=0.)
        out = tl.load(out_ptr + n * o_sn + channels[:, None] * o_sc + pixels[None, :] * o_shw, mask=mask, other=0.)
        z = tl.load(z_ptr + n * z_sn + channels[:, None] * z_sc + pixels[None, :] * z_shw, mask=mask, other=0.)
        g = tl.where(out > 0., dout, 0.).to(g_ptr.dtype.element_ty)
        tl.store(g_ptr + n * g_sn + channels[:, None] * g_sc + pixels[None, :] * g_shw, g, mask=mask)
        tl.store(dz_ptr + n * dz_sn + channels[:, None] * dz_sc + pixels[None, :] * dz_shw,
                 (g.to(ACC) * a[:, None]).to(dz_ptr.dtype.element_ty), mask=mask)
        g_total += tl.sum(g.to(ACC), axis=1)
        centred_total += tl.sum(tl.where(mask, g.to(ACC) * (z.to(ACC) - mu[:, None]), 0.), axis=1)
    tl.store(g_sum_ptr + n * C + channels, g_total, mask=channel_mask)
    tl.store(centred_sum_ptr + n * C + channels, centred_total, mask=channel_mask)


def gated_norm_act_backward(
        dout: torch.Tensor, out: torch.Tensor, z: torch.Tensor, a: torch.Tensor, mu: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, g a, sum_hw g, sum_hw g (z - mu)) in one pass: ``g = dout [out > 0]`` in out's layout and dtype, ``g a``
    (per-(n, c) ``a``, (N, C)) in z's, the sums (N, C) in mu's dtype."""
    n, c, h, w = z.shape
    dout, out, z = _merged(dout), _merged(out), _merged(z)
    g, dz = torch.empty_like(out), torch.empty_like(z)
    g_sum = torch.empty((n, c), dtype=mu.dtype, device=z.device)
    centred_sum = torch.empty_like(g_sum)
    block_c, block_hw = _blocks(z)
    _gated_norm_act_backward_kernel[(n, triton.cdiv(c, block_c))](
        dout, out, z, g, dz, a.contiguous(), mu, g_sum, centred_sum, c, h * w,
        *_strides(dout), *_strides(out), *_strides(z), *_strides(g), *_strides(dz),
        BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=_accumulator(mu.dtype))
    return g, dz, g_sum, centred_sum
