"""How the exact training tail forms ``z a + b`` in NCHW, eager, on the CPU: a BatchNorm kernel or addcmul.

The tail forms ``z a + b`` in one pass over ``z``: the gated norm in its forward, per-(n, c) ``a`` and ``b``
(``timm_sae.tail._GatedNormAct``). In NCHW both factors are broadcast along the rows, which addcmul does not
vectorise; an eval-mode BatchNorm over the (1, N*C, H, W) view with mean 0, variance 1 and eps 0 computes the same
values (``timm_sae.tail._affine``). (The statistics' share of z's gradient, ``c1 z + c0``, is added in place to the
gated pass's gradient instead, which needs no such kernel.) This script times one tail, forward +
backward, with each form for the last-norm shapes of saeresnet18 and saeresnet50 (training batch 8, 224 px),
interleaved, and reports the median over rounds of addcmul time / BatchNorm time (> 1: the BatchNorm kernel is
faster).

    python benchmarks/tail_affine.py        # writes benchmarks/results/tail_affine_cpu.{json,md}
"""
import contextlib
import sys
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional
from unittest import mock

# run as a file (python benchmarks/tail_affine.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from benchmarks.tail_reductions import compare, header, parse_args, write
from timm_sae import tail


def addcmul_affine(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``z a + b`` by addcmul, the form the tail takes in channels_last (fp32 here)."""
    assert z.dtype == a.dtype == dtype
    return torch.addcmul(b, z, a)


FORMS: Dict[str, Callable[[], ContextManager[object]]] = {
    'addcmul': lambda: mock.patch.object(tail, '_affine', addcmul_affine),
    'BatchNorm kernel': contextlib.nullcontext,
}


def markdown(report: dict) -> str:
    lines = header(report, 'The exact tail\'s `z a + b` in NCHW: a BatchNorm kernel or addcmul', 'NCHW')
    lines[-1] += (
        'median over rounds of addcmul time / BatchNorm-kernel time (> 1: the BatchNorm kernel is faster, which '
        'the tail takes), quartiles in brackets.')
    lines += ['', '| model | z (N, C, H, W) | addcmul ms | BatchNorm kernel ms | ratio |', '|---|---|---:|---:|---:|']
    for row in report['results']:
        lines.append(
            f"| {row['model']} | {tuple(row['shape'])} | {row['addcmul_ms']:.3f} | {row['BatchNorm kernel_ms']:.3f} | "
            f"{row['ratio']:.3f} [{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], 'tail_affine_cpu.json')
    write(__file__, argv, args, compare(FORMS, torch.contiguous_format, args.batch_size, args.rounds, args.calls),
          markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
