"""How the exact training tail forms ``z a + b`` in NCHW, eager, on the CPU: a BatchNorm kernel or addcmul.

The backward of the tail's statistics (``timm_sae.tail._NormSqueeze``) reaches ``z`` as ``c1 z + c0``, per-channel
``c1`` and per-(n, c) ``c0``, one pass over ``z``. In NCHW both factors are broadcast along the rows, which
addcmul does not vectorise; an eval-mode BatchNorm over the (1, N*C, H, W) view with mean 0, variance 1 and eps 0
computes the same values (``timm_sae.tail._affine``). This script times one tail, forward + backward, with each
form for the last-norm shapes of saeresnet18 and saeresnet50 (training batch 8, 224 px), interleaved, and reports
the median over rounds of addcmul time / BatchNorm time (> 1: the BatchNorm kernel is faster).

    python benchmarks/tail_affine.py        # writes benchmarks/results/tail_affine_cpu.{json,md}
"""
import argparse
import contextlib
import datetime
import sys
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional
from unittest import mock

# run as a file (python benchmarks/tail_affine.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from benchmarks.common import RESULTS_DIR
from benchmarks.environment import command_line, environment, write_report
from benchmarks.tail_reductions import compare
from timm_sae import tail


def addcmul_affine(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``z a + b`` by addcmul, as the tail formed it before it took the BatchNorm kernel in NCHW (fp32 here)."""
    assert z.dtype == a.dtype == dtype
    return torch.addcmul(b, z, a)


FORMS: Dict[str, Callable[[], ContextManager[object]]] = {
    'addcmul': lambda: mock.patch.object(tail, '_affine', addcmul_affine),
    'BatchNorm kernel': contextlib.nullcontext,
}


def markdown(report: dict) -> str:
    settings = report['settings']
    lines = [
        '# The exact tail\'s `z a + b` in NCHW: a BatchNorm kernel or addcmul', '',
        f"`{report['command']}`", '',
        f"{report['hardware']['cpu']}, {report['hardware']['torch_threads']} torch threads; "
        + ', '.join(f'{k} {v}' for k, v in report['versions'].items()) + '.', '',
        f"One tail (`timm_sae.tail.gated_tail`, SaE gate), forward + backward, fp32, NCHW, batch "
        f"{settings['batch_size']}; {settings['rounds']} interleaved rounds of {settings['calls']} calls. Ratio: "
        'median over rounds of addcmul time / BatchNorm-kernel time (> 1: the BatchNorm kernel is faster, which '
        'the tail takes), quartiles in brackets.', '',
        '| model | z (N, C, H, W) | addcmul ms | BatchNorm kernel ms | ratio |',
        '|---|---|---:|---:|---:|',
    ]
    for row in report['results']:
        lines.append(
            f"| {row['model']} | {tuple(row['shape'])} | {row['addcmul_ms']:.3f} | {row['BatchNorm kernel_ms']:.3f} | "
            f"{row['ratio']:.3f} [{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=21)
    parser.add_argument('--calls', type=int, default=10, help='calls per form per round')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'tail_affine_cpu.json')
    args = parser.parse_args(argv)
    results = compare(FORMS, torch.contiguous_format, args.batch_size, args.rounds, args.calls)
    versions, hardware = environment('cpu')
    report = {
        'command': command_line(__file__, sys.argv[1:] if argv is None else argv),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'versions': versions, 'hardware': hardware,
        'settings': {'batch_size': args.batch_size, 'rounds': args.rounds, 'calls': args.calls},
        'results': results,
    }
    write_report(args.out, report, markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
