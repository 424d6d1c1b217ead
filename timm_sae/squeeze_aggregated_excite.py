"""Squeeze aggregated Excitation (SaE) channel attention.

Paper: `Squeeze aggregated excitation network` - M. Narayanan, https://arxiv.org/abs/2308.13343
(the same layer is called SENetV2 in https://arxiv.org/abs/2311.10807).

For an input ``x`` of shape (N, C, H, W)::

    z   = mean_{H,W}(x)                         squeeze, (N, C)
    h_i = act(W_i z + b_i),   i = 1..k          k parallel branches ("cardinality"), each C -> d
    h   = concat(h_1, ..., h_k)                 aggregate, (N, k*d)
    s   = gate(W_e h + b_e)                     excitation, k*d -> C
    y   = x * (1 + s)                           residual gate (author's code: ``x + x * s``)

Every branch reads the same ``z``, so the k branches are one linear map C -> k*d followed by an
element-wise activation. The layer stores them as a single ``nn.Linear`` (``fc_branches``) whose
output rows ``i*d .. (i+1)*d - 1`` (weight rows and bias entries) belong to branch ``i``.

Called as ``sae(x)`` it squeezes ``x`` itself, like timm's ``SEModule``. A caller that already has
``z`` passes it, ``sae(x, z)``: the SaE Bottleneck computes it from its narrow conv3 input
(``timm_sae.blocks``), so the squeeze never reads the full-width ``x``.
"""
from typing import Optional, Type, Union

import torch
from timm.layers import create_act_layer, make_divisible
from torch import nn


class SqueezeAggregatedExcitation(nn.Module):
    """SaE module, configured like timm's ``SEModule``.

    Args:
        channels: input (and output) channels C.
        cardinality: number of parallel fully connected branches k (paper default 4).
        rd_ratio: branch width d as a fraction of C, rounded to ``rd_divisor`` (default 1/32).
        rd_channels: branch width d; overrides ``rd_ratio`` when given.
        rd_divisor: d is rounded to a multiple of this (default 8).
        bias: biases in both linear maps.
        act_layer: activation after the branches (default ReLU).
        gate_layer: gate after the excitation (default sigmoid).
        residual: ``y = x * (1 + s)`` as in the author's code when True, plain SE gating
            ``y = x * s`` when False.
        inplace: gate ``x`` in place when nothing needs it afterwards (no autograd, no tracing or
            compiling), for callers that own ``x``, such as the SaE blocks with their BatchNorm output.
    """

    def __init__(
            self,
            channels: int,
            cardinality: int = 4,
            rd_ratio: float = 1. / 32,
            rd_channels: Optional[int] = None,
            rd_divisor: int = 8,
            bias: bool = True,
            act_layer: Union[str, Type[nn.Module]] = nn.ReLU,
            gate_layer: Union[str, Type[nn.Module]] = 'sigmoid',
            residual: bool = True,
            inplace: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        _check_int('channels', channels, 1)
        _check_int('cardinality', cardinality, 1)
        if rd_channels:
            _check_int('rd_channels', rd_channels, 1)
        else:
            if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)) or not 0. < rd_ratio <= 1.:
                raise ValueError(
                    f'rd_ratio (sae_rd_ratio in the model entrypoints) must be a number in (0, 1], '
                    f'got {rd_ratio!r}')
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        dd = {'device': device, 'dtype': dtype}
        self.cardinality = cardinality
        self.rd_channels = rd_channels
        self.residual = residual
        self.inplace = inplace
        self.fc_branches = nn.Linear(channels, cardinality * rd_channels, bias=bias, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc_excite = nn.Linear(cardinality * rd_channels, channels, bias=bias, **dd)
        self.gate = create_act_layer(gate_layer)

    def excitation(self, z: torch.Tensor) -> torch.Tensor:
        """The excitation ``s`` (N, C) of the squeeze ``z`` (N, C): the aggregated branches, then the gate."""
        return self.gate(self.fc_excite(self.act(self.fc_branches(z))))

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """The per-channel multiplier of ``x`` from its squeeze ``z`` (N, C): ``1 + s`` (or ``s``), (N, C, 1, 1)."""
        s = self.excitation(z)
        if self.residual:
            s = s + 1.  # on the small (N, C) tensor, so that x is read once
        return s[:, :, None, None]

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The gated map ``x * (1 + s)`` (or ``x * s``); ``z``: the squeeze ``mean_hw(x)`` if the caller has it."""
        if z is None:
            # the mean as a sum scaled on the small tensor: mean's backward divides a full-width expanded
            # gradient, sum's stays an expanded view
            z = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
        scale = self.excite(z)
        if self.inplace and _may_write_in_place(x, scale):
            return x.mul_(scale)
        return x * scale

    def extra_repr(self) -> str:
        return f'cardinality={self.cardinality}, rd_channels={self.rd_channels}, residual={self.residual}'


def _may_write_in_place(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """True when autograd does not need ``x`` and no tracer or compiler records the op (they get ``x * scale``)."""
    if not torch.jit.is_scripting():
        if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
            return False
    return not (x.requires_grad or scale.requires_grad)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        alias = ' (sae_cardinality in the model entrypoints)' if name == 'cardinality' else ''
        raise ValueError(f'{name}{alias} must be an integer >= {minimum}, got {value!r}')
