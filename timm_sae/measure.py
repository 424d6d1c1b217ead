"""Model measurements shared by the CLI, the demo and the benchmarks.

Parameters and GMACs are counted on the meta device (no memory, no weights initialised, nothing computed), GMACs
with torch's own ``FlopCounterMode`` (multiply-accumulates of convolutions and matrix products,
as timm reports them). Throughput is timed with the models interleaved round by round, so that
drift of the machine hits every model alike; ratios are medians of per-round ratios.
"""
import contextlib
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import timm
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def software_versions() -> Dict[str, str]:
    """Versions of the software that measurements depend on."""
    from . import __version__
    return {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
            'timm_sae': __version__}


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def gmacs(model: torch.nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)) -> float:
    """Giga multiply-accumulates of one forward pass of a single image, counted on the meta device: the model's
    weights, wherever they are, are stood in for by meta tensors of their shapes, so nothing is computed."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {name: torch.empty_like(t, device='meta') for name, t in tensors.items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(model, meta, (torch.empty(1, *input_size, device='meta'),))
    return counter.get_total_flops() / 2e9


def describe(model_name: str, input_size: Tuple[int, int, int] = (3, 224, 224), **kwargs) -> Dict[str, float]:
    """Parameters (millions) and GMACs of a registered model, built on the meta device."""
    model = timm.create_model(model_name, device='meta', **kwargs).eval()
    return {'params_m': param_count(model) / 1e6, 'gmacs': gmacs(model, input_size)}


def balanced_orders(names: Sequence[str]) -> List[List[str]]:
    """Orders of ``names`` in which each name directly follows every other one equally often.

    A Williams design (Williams 1949, the balanced crossover): the rows ``0, 1, n-1, 2, n-2, ...`` shifted by
    0 .. n-1, and for an odd number of names their mirror images too (n orders for an even n, 2n for an odd
    one), so that what one step leaves behind (the allocator's free lists, the caches) falls on every other
    step alike. Rotating one order (A B C, B C A, C A B) does not: C always runs after B.
    """
    count = len(names)
    first = [0] + [(k + 1) // 2 if k % 2 else count - k // 2 for k in range(1, count)]  # 0, 1, n-1, 2, n-2, ...
    rows = [[(shift + index) % count for index in first] for shift in range(count)]
    if count % 2:
        rows += [row[::-1] for row in rows]
    return [[names[index] for index in row] for row in rows]


def time_interleaved(
        steps: Mapping[str, Callable[[], None]],
        rounds: int,
        warmup: int = 1,
        sync: Callable[[], None] = lambda: None,
) -> Dict[str, List[float]]:
    """Seconds per call of each step for ``rounds`` rounds after warm-up, round i in the i-th of
    ``balanced_orders`` (cyclically): over a whole number of its cycles each step runs right after every other
    step equally often."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    orders = balanced_orders(list(steps))
    for round_index in range(rounds):
        for name in orders[round_index % len(orders)]:
            step = steps[name]
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def quartiles(values: Sequence[float]) -> Tuple[float, float]:
    """First and third quartile (``statistics.quantiles``' inclusive method); one value is its own quartiles."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return q1, q3
