"""The gated tail of a residual block, exact, at the plain block's memory.

A block that gates its last BatchNorm output by a function of that output's spatial mean (SaE,
arXiv:2308.13343; SE; ECA) ends, with ``z`` the last conv's output::

    x   = gamma (z - mu) r + beta          BatchNorm (batch statistics mu, var; r = (var + eps)^-1/2)
    G   = excite(mean_hw(x))               the gate per (n, c): 1 + s (SaE's residual gate) or s
    out = act(x G [* drop_path] + shortcut)

Written out by autograd, this keeps ``x`` for the gate's backward: about a quarter more activation
memory than the plain block, which keeps only ``z`` and ``out`` (needed by the next block anyway).
Here the tail never materialises ``x`` for autograd:

* the squeeze needs no pass over ``x``: ``mean_hw(x) = gamma (m - mu) r + beta`` with ``m = mean_hw(z)``,
  taken in the statistics pass (``_NormSqueeze``: per-(n, c) moments merged per channel (Chan et al.),
  as accurate as BatchNorm's own; the squeeze and its backward are per-(n, c) arithmetic in the same Function);
* ``out = act(z a + b + shortcut)`` with per-(n, c) ``a = gamma r G``, ``b = beta G - mu a``
  (``_GatedNormAct``), which keeps ``z`` and ``out`` only;
* the backward is written by hand from per-(n, c) reductions: ``g = dout [out > 0]`` (the shortcut's
  gradient), ``A = sum_hw g``, ``B = sum_hw g (z - mu)`` (one BatchNorm backward call on the
  (1, N*C, H, W) view gives ``g a``, ``B`` and ``A`` at once), the gate's gradient ``gamma r B + beta A``;
  the statistics' gradients reach ``z`` as ``c1 z + c0`` with per-channel ``c1`` and per-(n, c) ``c0``, added in
  place to ``g a`` (``_NormSqueeze`` hands ``z`` itself on to ``_GatedNormAct``, so that ``g a`` arrives there and
  autograd sums no two full-width gradients), and gamma's and beta's gradients are summed in ``_NormSqueeze``,
  which hands the normalisation on as one tensor;
* traced by torch.compile, the per-(n, c) moments are one ``var_mean`` and (channels_last) the sums plain
  reductions, which Inductor fuses; eager, norm kernels compute them faster than those ops would, except for
  small channels_last samples (and on devices other than the CPU), where a norm kernel per sample costs more
  calls than whole-tensor reductions (``PER_SAMPLE_KERNELS_FROM_BYTES``).

The excitation between the two Functions (SaE's branches, SE's MLP, ECA's conv) stays ordinary modules:
autograd gives their parameters their gradients as before. BatchNorm's running statistics are updated
as ``nn.BatchNorm2d`` does (unbiased running variance, ``momentum=None`` as a cumulative average,
``num_batches_tracked``).

``fused_tail`` says where this runs (training, ``nn.BatchNorm2d`` or a ``SyncBatchNorm`` that would not
sync, ``nn.ReLU``, nothing hooked on the modules it stands in for, no torch.fx or TorchScript; under
torch.compile where the block asks for it); everywhere else the block runs timm's own form.
``folded_eval_tail`` is the eval counterpart: the gate folded into the BatchNorm's per-channel affine, one
pass over ``z`` before the residual add.
"""
from typing import Callable, NamedTuple, Optional, Tuple, Type, TypeGuard, TypeVar

import torch
import torch.distributed as dist
from timm.layers import DropPath, EcaModule, EffectiveSEModule, SEModule
from torch import nn
from torch.nn.modules import module as nn_module
from torch.nn.modules.batchnorm import _BatchNorm

from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__all__ = [
    'Gate', 'gate_of', 'fused_tail', 'gated_tail', 'running_batch_norm', 'folded_eval', 'folded_eval_tail',
    'squeeze_gate', 'gated_by_squeeze', 'unobserved']


ModuleT = TypeVar('ModuleT', bound=nn.Module)


class Gate(NamedTuple):
    """An attention module's gate: ``excitation`` maps the squeeze (N, C) to s (N, C); the block's output is
    ``x (1 + s)`` where ``residual`` (SaE's default), else ``x s``."""
    excitation: Callable[[torch.Tensor], torch.Tensor]
    residual: bool


def _stats_dtype(z: torch.Tensor) -> torch.dtype:
    """fp32 accumulation for bf16 / fp16, else z's own precision (fp64 stays fp64)."""
    return torch.promote_types(z.dtype, torch.float32)


# channels_last, eager, on the CPU: a sample (C, H, W) of at least this many bytes takes the per-sample norm
# kernels, which read z once, for the backward's sums (and, in fp32 / fp64, the statistics); a smaller one
# whole-tensor reductions, fewer calls whose fixed cost is lower (benchmarks/tail_reductions.py measures both
# across the family's block shapes). Other devices take the whole-tensor reductions at every size: there each
# call is a kernel launch, and a batch of 128 would make 128 of them per reduction (benchmarks/gpu_run.sh times
# the result)
PER_SAMPLE_KERNELS_FROM_BYTES = 1 << 19


def per_sample_kernels(z: torch.Tensor) -> bool:
    """Whether the eager channels_last tail reduces ``z`` per sample: on the CPU, from
    ``PER_SAMPLE_KERNELS_FROM_BYTES`` a sample."""
    return z.device.type == 'cpu' and z.numel() // z.shape[0] * z.element_size() >= PER_SAMPLE_KERNELS_FROM_BYTES


def _moments(z: torch.Tensor, triton: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m - mu, mu, var): per-(n, c) spatial means less the per-channel batch mean ``mu``, ``mu``, and the biased
    batch variance of ``z``, in ``_stats_dtype``, as accurate as BatchNorm's own (``triton``: by ``tail_triton``'s
    kernel)."""
    n, c, h, w = z.shape
    if triton:
        from . import tail_triton
        m, sample_var = tail_triton.sample_moments(z, _stats_dtype(z))
    elif torch.compiler.is_compiling():
        # Inductor: one Welford reduction per (n, c) in either layout, accumulated in fp32 for bf16 / fp16
        sample_var, m = torch.var_mean(z.to(_stats_dtype(z)), dim=(2, 3), correction=0)
    elif z.dtype in (torch.float32, torch.float64):
        # norm kernels' own moments (torch.var_mean is several times slower on the CPU): GroupNorm with one
        # channel a group where z is contiguous (its normalised output is dropped), else (channels_last)
        # BatchNorm's per sample, where the channels are innermost, or for small samples BatchNorm's over the
        # batch beside one reduction for the means
        if z.is_contiguous():
            _, m, rstd = torch.native_group_norm(z, None, None, n, c, h * w, c, 0.)
            sample_var = rstd.pow(-2)
        elif per_sample_kernels(z):
            stats = [torch.batch_norm_update_stats(sample, None, None, 0.) for sample in z.split(1)]
            m, sample_var = torch.stack([mean for mean, _ in stats]), torch.stack([var for _, var in stats])
        else:
            mu, var = torch.batch_norm_update_stats(z, None, None, 0.)
            return z.mean((2, 3)) - mu, mu, var
    else:
        # bf16 / fp16: the kernels above would round their results to z's dtype. E[z^2] - E[z]^2 accumulated in
        # fp32 loses about R^2 2^-24 of the variance for a channel whose mean is R times its spread, less than
        # the rounding of z itself puts there (about R^2 2^-18 for bf16, R^2 2^-22 for fp16).
        dtype = _stats_dtype(z)
        m = z.mean(dim=(2, 3), dtype=dtype)
        square = torch.linalg.vector_norm(z, 2, dim=(2, 3), dtype=dtype).square_() / (h * w)
        sample_var = (square - m.square()).clamp_min_(0.)
    mu = m.mean(0)
    centred = m - mu
    # Chan et al.: the within-sample variances plus the variance of the sample means
    return centred, mu, torch.addcmul(sample_var, centred, centred).mean(0)


class _NormSqueeze(torch.autograd.Function):
    """``z`` -> (squeeze, affine, var, z): ``mean_hw`` of BatchNorm's output with batch statistics,
    ``gamma r (m - mu) + beta`` (N, C), ``r = (var + eps)^-1/2``; ``affine``, the normalisation
    ``x = gamma r (z - mu) + beta`` as one (3, C) tensor (gamma r, mu, beta) for ``_GatedNormAct``; the biased
    batch variance ``var`` for the running statistics (not differentiable); and ``z`` itself (a view, as autograd
    returns an input), the input ``_GatedNormAct`` takes, so that its gradient of ``z`` comes back through here.

    Backward: gamma and beta take both Functions' gradients here (``affine``'s and the squeeze's), so autograd adds
    none; ``z`` the statistics' share ``dz = dm / HW + dmu / M + dvar 2 (z - mu) / M``, ``c1 z + c0``, added in
    place to ``_GatedNormAct``'s gradient of ``z`` (two passes over it, no new full-width tensor: about twice as
    fast as a new ``c1 z + c0`` that autograd then adds).
    """

    @staticmethod
    def forward(
            ctx, z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float, triton: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        centred, mu, var = _moments(z, triton)
        r = torch.rsqrt(var + eps)
        gamma_r = gamma * r
        affine = torch.stack((gamma_r, mu, beta.to(mu.dtype)))
        ctx.save_for_backward(z, centred, r, affine)
        ctx.mark_non_differentiable(var)
        return torch.addcmul(beta, centred, gamma_r), affine, var, z

    @staticmethod
    def backward(
            ctx, d_squeeze: torch.Tensor, d_affine: torch.Tensor, _: Optional[torch.Tensor], dz: torch.Tensor,
    ):
        z, centred, r, (gamma_r, mu, _) = ctx.saved_tensors
        n, c, h, w = z.shape
        d_gamma_r, d_mu, d_beta = d_affine
        d_m = d_squeeze * gamma_r
        d_gamma_r = (d_squeeze * centred).sum(0).add_(d_gamma_r)
        # 2 d var / M, with d (gamma r) / d var = -gamma r^3 / 2
        c1 = torch.mul(gamma_r * r.square(), d_gamma_r).mul_(-1. / (n * h * w))
        # (dm + (dmu - sum_n dm) / N - c1 HW mu) / HW, with the squeeze's own share of dmu
        c0 = torch.addcmul((d_mu - d_m.sum(0)).div_(n), c1, mu, value=-h * w).add(d_m).div_(h * w)
        # dz is _GatedNormAct's fresh gradient of z, which nothing else reads: safe to add to in place
        dz.addcmul_(z, c1.view(c, 1, 1)).add_(c0.view(n, c, 1, 1))
        return dz, d_gamma_r * r, d_squeeze.sum(0).add_(d_beta), None, None


def _affine(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``z a + b`` (a, b broadcast per channel or per (n, c)) in one pass, in a's precision, stored as ``dtype``.

    NCHW on the CPU, eager: an eval-mode BatchNorm over (1, N*C, H, W) with mean 0, variance 1 and eps 0, whose
    per-channel scale is then exactly ``a`` and shift exactly ``b``. addcmul does not vectorise two operands
    broadcast along the rows there: one tail, forward + backward, was up to 1.13 times as fast this way at the
    family's shapes, and never measurably slower (benchmarks/tail_affine.py).
    """
    n, c, h, w = z.shape
    if z.is_contiguous() and z.device.type == 'cpu' and dtype == z.dtype and not torch.compiler.is_compiling():
        ones = torch.ones(n * c, dtype=a.dtype, device=z.device)
        return torch.batch_norm(
            z.view(1, n * c, h, w), a.expand(n, c, 1, 1).reshape(-1), b.expand(n, c, 1, 1).reshape(-1),
            torch.zeros_like(ones), ones, False, 0., 0., False).view_as(z)
    if z.dtype == a.dtype == dtype:
        return torch.addcmul(b, z, a)
    return torch.addcmul(b, z, a, out=torch.empty_like(z, dtype=dtype))


def _add_act_(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(out + shortcut)`` in place; one pass where the CPU has the fused kernel (fp32 / fp64, no autograd)."""
    differentiable = torch.is_grad_enabled() and (out.requires_grad or shortcut.requires_grad)
    if (out.device.type == 'cpu' and out.dtype in (torch.float32, torch.float64) and not differentiable
            and not torch.compiler.is_compiling()):
        return torch.ops.aten._add_relu_(out, shortcut)
    return out.add_(shortcut).relu_()


def _gate(s: torch.Tensor, residual: bool, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """G (N, C): ``1 + s`` (residual) or ``s``, times the drop_path scale per sample (``keep``, or None)."""
    gate = s.reshape(s.shape[0], -1)
    if residual:
        gate = gate + 1.
    return gate if keep is None else gate * keep.reshape(-1, 1)


def _gated_affine(
        gamma_r: torch.Tensor, beta: torch.Tensor, mu: torch.Tensor, gate: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) ``a = gamma r G`` and ``b = beta G - mu a``: ``G (gamma r (z - mu) + beta) = z a + b``. ``b`` takes
    the rounded ``a``, as BatchNorm's kernels fold their statistics, so that ``z a + b`` keeps ``(z - mu) a``'s digits
    where the mean is large against the spread."""
    scale = gamma_r * gate
    return scale, torch.addcmul(beta * gate, mu, scale, value=-1.)


def _gated_norm(
        z: torch.Tensor, gamma_r: torch.Tensor, beta: torch.Tensor, mu: torch.Tensor, gate: torch.Tensor,
        dtype: torch.dtype,
) -> torch.Tensor:
    """``G (gamma r (z - mu) + beta)`` in one pass over ``z``, ``z a + b`` (``_gated_affine``), stored as ``dtype``:
    the rounding of BatchNorm's own CPU kernel, which folds its statistics into such a per-channel affine."""
    n, c = gate.shape
    scale, shift = _gated_affine(gamma_r, beta, mu, gate)
    return _affine(z, scale.view(n, c, 1, 1), shift.view(n, c, 1, 1), dtype)


class _GatedNormAct(torch.autograd.Function):
    """``relu(G (gamma r (z - mu) + beta) + shortcut)``, keeping ``z`` and the output only (module docstring).

    ``G = (1 + s) keep`` (residual) or ``s keep``, keep the drop_path scale per sample (or None); ``affine``
    (gamma r, mu, beta) from ``_NormSqueeze``, which takes this Function's gradient of it.
    """

    @staticmethod
    def forward(
            ctx, z: torch.Tensor, s: torch.Tensor, affine: torch.Tensor, shortcut: torch.Tensor,
            keep: Optional[torch.Tensor], residual: bool, triton: bool,
    ) -> torch.Tensor:
        gamma_r, mu, beta = affine
        gate = _gate(s, residual, keep)
        dtype = torch.promote_types(z.dtype, s.dtype)
        if triton:
            from . import tail_triton
            out = tail_triton.gated_norm_act(z, *_gated_affine(gamma_r, beta, mu, gate), shortcut, dtype)
        else:
            out = _add_act_(_gated_norm(z, gamma_r, beta, mu, gate, dtype), shortcut)
        # s rather than G: the excitation keeps s for its own backward already
        ctx.save_for_backward(z, out, s, keep, affine)
        ctx.residual, ctx.triton = residual, triton
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        z, out, s, keep, affine = ctx.saved_tensors
        gamma_r, mu, beta = affine
        gate = _gate(s, ctx.residual, keep)
        scale = gamma_r * gate
        if ctx.triton:
            from . import tail_triton
            g, dz, a_sum, b_sum = tail_triton.gated_norm_act_backward(dout, out, z, scale, mu)
        else:
            g = torch.ops.aten.threshold_backward(dout, out, 0)
            dz, a_sum, b_sum = _norm_backward(g, z, scale, mu)
        # d out / d G = gamma r (z - mu) + beta, summed over hw with g: gamma r B + beta A
        d_gate = torch.addcmul(beta * a_sum, gamma_r, b_sum)
        d_s = d_gate if keep is None else d_gate * keep.view(-1, 1)
        d_gamma_r, d_beta = (gate * b_sum).sum(0), (gate * a_sum).sum(0)
        d_affine = torch.stack((d_gamma_r, -gamma_r * d_beta, d_beta))
        return dz, d_s.to(s.dtype).view(s.shape), d_affine, g, None, None, None


def _scaled(g: torch.Tensor, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``g a`` (a broadcast per (n, c)) in one pass, stored as ``dtype`` (compiled: a cast that Inductor fuses)."""
    if torch.compiler.is_compiling() or g.dtype == a.dtype == dtype:
        return (g * a).to(dtype)
    return torch.mul(g, a, out=torch.empty_like(g, dtype=dtype))


def _norm_backward(
        g: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, mu: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g scale, sum_hw g, sum_hw g (z - mu)) with per-(n, c) ``scale`` (N, C), by PyTorch's kernels."""
    n, c, h, w = z.shape
    if z.is_contiguous() and g.is_contiguous():
        # one eval-mode BatchNorm backward over (1, N*C, H, W), mean mu and variance 1 (eps 0): g scale,
        # sum g (z - mu), sum g
        dz, b_sum, a_sum = torch.ops.aten.native_batch_norm_backward(
            g.view(1, n * c, h, w), z.view(1, n * c, h, w), scale.to(mu.dtype).flatten(),
            mu.expand(n, c).reshape(-1), torch.ones(n * c, dtype=mu.dtype, device=z.device), None, None, False, 0.,
            [True, True, True])
        return dz.view_as(z), a_sum.view(n, c), b_sum.view(n, c)
    # channels_last: the sums (per sample for large samples, eager), then g scale in one pass; compiled, Inductor
    # fuses both sums into one reduction and dz into one pointwise pass
    a_sum, b_sum = _per_sample_sums(g, z, mu) \
        if per_sample_kernels(z) and not torch.compiler.is_compiling() else _plain_sums(g, z, mu)
    return _scaled(g, scale.view(n, c, 1, 1), z.dtype), a_sum, b_sum


def _plain_sums(g: torch.Tensor, z: torch.Tensor, mu: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum_hw g, sum_hw g (z - mu)), each (N, C), as reductions over the whole tensors, in mu's precision."""
    return g.sum((2, 3), dtype=mu.dtype), (z - mu.view(-1, 1, 1)).mul_(g).sum((2, 3), dtype=mu.dtype)


def _per_sample_sums(g: torch.Tensor, z: torch.Tensor, mu: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum_hw g, sum_hw g (z - mu)), each (N, C), one eval-mode BatchNorm backward per sample (mean mu, variance 1,
    eps 0)."""
    ones = torch.ones_like(mu)
    sums = [
        torch.ops.aten.native_batch_norm_backward(
            g_sample, z_sample, None, mu, ones, None, None, False, 0., [False, True, True])[1:]
        for g_sample, z_sample in zip(g.split(1), z.split(1), strict=True)]
    return torch.stack([s[1] for s in sums]), torch.stack([s[0] for s in sums])


def _norm_affine(norm: _BatchNorm, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if norm.weight is not None:
        return norm.weight, norm.bias
    ones = torch.ones(norm.num_features, dtype=like.dtype, device=like.device)
    return ones, torch.zeros_like(ones)


def _momentum(norm: _BatchNorm) -> float:
    """The running statistics' update factor of this step, as ``_BatchNorm.forward`` computes it."""
    if norm.num_batches_tracked is None:
        return 0. if norm.momentum is None else norm.momentum
    norm.num_batches_tracked.add_(1)
    return 1. / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum


def _drop_path_keep(drop_path: Optional[nn.Module], z: torch.Tensor) -> Optional[torch.Tensor]:
    """timm's ``drop_path`` per-sample scale (N, 1, 1, 1), drawn as ``timm.layers.drop_path`` draws it."""
    if not isinstance(drop_path, DropPath) or not drop_path.training or drop_path.drop_prob == 0.:
        return None
    keep_prob = 1. - drop_path.drop_prob
    keep = z.new_empty((z.shape[0], 1, 1, 1)).bernoulli_(keep_prob)
    if keep_prob > 0. and drop_path.scale_by_keep:
        keep.div_(keep_prob)
    return keep


def gated_tail(
        z: torch.Tensor, norm: nn.Module, gate: Gate, shortcut: torch.Tensor,
        drop_path: Optional[nn.Module] = None, triton: bool = False,
) -> torch.Tensor:
    """``relu(G x [* drop_path] + shortcut)``, ``x = norm(z)`` with batch statistics, G the gate of ``mean_hw(x)``.

    Exact (values, gradients, running statistics) against the modules it stands in for, in training; keeps
    ``z`` and the output only. ``fused_tail`` says where it applies. ``triton``: ``tail_triton``'s kernels where
    they run (CUDA, eager).
    """
    if not isinstance(norm, _BatchNorm):
        raise TypeError(f'gated_tail takes a BatchNorm, got {type(norm).__name__}')
    count = z.numel() // z.shape[1]
    if count == 1:  # as nn.BatchNorm2d says it
        raise ValueError(f'Expected more than 1 value per channel when training, got input size {z.size()}')
    gamma, beta = _norm_affine(norm, z)
    triton = triton and not torch.compiler.is_compiling() and _triton_runs_on(z)
    squeeze, affine, var, z = _NormSqueeze.apply(z, gamma, beta, norm.eps, triton)
    running_mean, running_var = norm.running_mean, norm.running_var
    if norm.track_running_stats and running_mean is not None and running_var is not None:
        factor = _momentum(norm)
        with torch.no_grad():
            running_mean.lerp_(affine[1].to(running_mean.dtype), factor)
            running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), factor)
    s = gate.excitation(squeeze.to(z.dtype))
    keep = _drop_path_keep(drop_path, z)
    return _GatedNormAct.apply(z, s, affine, shortcut, keep, gate.residual, triton)


def _triton_runs_on(z: torch.Tensor) -> bool:
    from . import tail_triton
    return tail_triton.runs_on(z)


def folded_eval_tail(
        z: torch.Tensor, norm: nn.Module, gate: Gate, shortcut: torch.Tensor,
        squeeze: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Eval: ``relu(G x + shortcut)`` with the gate folded into BatchNorm's running affine, one pass over ``z``.

    ``squeeze``: ``mean_hw(x)`` where the caller has it (the Bottleneck's narrow squeeze), else taken from
    ``mean_hw(z)``.
    """
    if not isinstance(norm, _BatchNorm) or norm.running_mean is None or norm.running_var is None:
        raise TypeError('folded_eval_tail takes a BatchNorm with running statistics')
    gamma, beta = _norm_affine(norm, z)
    mean, var = norm.running_mean, norm.running_var
    gamma_r = gamma * torch.rsqrt(var + norm.eps)
    if squeeze is None:
        squeeze = (z.mean((2, 3), dtype=_stats_dtype(z)) - mean) * gamma_r + beta
    s = gate.excitation(squeeze.to(z.dtype))
    gated = _gated_norm(
        z, gamma_r, beta, mean, _gate(s, gate.residual, None), torch.promote_types(z.dtype, s.dtype))
    return _add_act_(gated, shortcut)


def squeeze_gate(gate_module: nn.Module) -> Optional[Gate]:
    """The gate of ``gate_module`` for a caller that has ``mean_hw(x)`` itself (``gated_by_squeeze``); None where
    the module must run itself (no such gate, hooks on it, tracing)."""
    gate = gate_of(gate_module)
    if gate is None or _tracing() or not unobserved(gate_module):
        return None
    return gate


def gated_by_squeeze(x: torch.Tensor, gate: Gate, squeeze: torch.Tensor) -> torch.Tensor:
    """``G x``, G the ``gate`` of ``squeeze`` = ``mean_hw(x)`` (N, C) given by the caller (the Bottleneck's narrow
    squeeze)."""
    s = gate.excitation(squeeze.to(x.dtype))
    return x * _gate(s, gate.residual, None).to(x.dtype)[:, :, None, None]


def _se_excitation(se: SEModule) -> Callable[[torch.Tensor], torch.Tensor]:
    def excitation(squeeze: torch.Tensor) -> torch.Tensor:
        return se.gate(se.fc2(se.act(se.bn(se.fc1(squeeze[:, :, None, None]))))).flatten(1)
    return excitation


def _ese_excitation(ese: EffectiveSEModule) -> Callable[[torch.Tensor], torch.Tensor]:
    def excitation(squeeze: torch.Tensor) -> torch.Tensor:
        return ese.gate(ese.fc(squeeze[:, :, None, None])).flatten(1)
    return excitation


def _eca_excitation(eca: EcaModule) -> Callable[[torch.Tensor], torch.Tensor]:
    def excitation(squeeze: torch.Tensor) -> torch.Tensor:
        y = eca.conv(squeeze[:, None, :])
        if eca.conv2 is not None:
            y = eca.conv2(eca.act(y))
        return eca.gate(y).flatten(1)
    return excitation


def gate_of(gate_module: Optional[nn.Module]) -> Optional[Gate]:
    """The gate of an attention module that gates by its input's channel means, or None where it has none.

    SaE; timm's ``SEModule`` and ``EffectiveSEModule`` (without ``add_maxpool``, which also reads the channel
    maxima) and ``EcaModule``, each computed from the squeeze exactly as their ``forward`` does.
    """
    if _exactly(gate_module, SqueezeAggregatedExcitation):
        return Gate(gate_module.excitation, gate_module.residual)
    if _exactly(gate_module, SEModule) and not gate_module.add_maxpool:
        return Gate(_se_excitation(gate_module), False)
    if _exactly(gate_module, EffectiveSEModule) and not gate_module.add_maxpool:
        return Gate(_ese_excitation(gate_module), False)
    if _exactly(gate_module, EcaModule):
        return Gate(_eca_excitation(gate_module), False)
    return None


def _exactly(module: Optional[nn.Module], cls: Type[ModuleT]) -> TypeGuard[ModuleT]:
    """``module`` is of class ``cls`` itself: a subclass may compute its gate otherwise."""
    return type(module) is cls


_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_backward_pre_hooks')
_GLOBAL_HOOKS = (
    '_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks', '_global_backward_pre_hooks')


def unobserved(*modules: Optional[nn.Module]) -> bool:
    """True when no hook (on these modules, or global) expects to see them run."""
    if any(getattr(nn_module, name, None) for name in _GLOBAL_HOOKS):
        return False
    return not any(m is not None and any(getattr(m, name, None) for name in _HOOKS) for m in modules)


def _tracing() -> bool:
    """TorchScript, torch.fx (torchvision's and timm's feature extractors) or a compiler records the forward."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def _batch_norm_alone(norm: nn.Module) -> bool:
    """``nn.BatchNorm2d``, or a ``SyncBatchNorm`` that would not sync (one process)."""
    if type(norm) is nn.BatchNorm2d:
        return True
    if type(norm) is not nn.SyncBatchNorm:
        return False
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(norm.process_group) == 1
    return True


def fused_tail(
        norm: nn.Module, gate_module: nn.Module, act: nn.Module, drop_path: Optional[nn.Module], training: bool,
        compiled: bool = True,
) -> bool:
    """Whether ``gated_tail`` (training) stands in exactly for timm's tail here (module docstring).

    ``compiled``: whether it also runs under torch.compile (traced into the graph with its backward), where
    timm's form is otherwise left to Inductor.
    """
    if not training or not norm.training or _tracing() or (torch.compiler.is_compiling() and not compiled):
        return False
    if type(act) is not nn.ReLU or not _batch_norm_alone(norm):
        return False
    if drop_path is not None and type(drop_path) is not DropPath:
        return False
    return unobserved(norm, gate_module, act, drop_path)


def running_batch_norm(norm: Optional[nn.Module]) -> TypeGuard[_BatchNorm]:
    """``nn.BatchNorm2d`` or ``SyncBatchNorm`` normalising with its running statistics (eval mode): a fixed
    per-channel affine map."""
    return (type(norm) in (nn.BatchNorm2d, nn.SyncBatchNorm) and isinstance(norm, _BatchNorm) and not norm.training
            and norm.running_mean is not None)


def folded_eval(norm: nn.Module, gate_module: nn.Module, act: nn.Module, drop_path: Optional[nn.Module]) -> bool:
    """Whether ``folded_eval_tail`` stands in for timm's tail here: eval-mode BatchNorm, eager, unobserved."""
    if not running_batch_norm(norm):
        return False
    if type(act) is not nn.ReLU or _tracing() or torch.compiler.is_compiling():
        return False
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob:
        return False
    return unobserved(norm, gate_module, act, drop_path)
