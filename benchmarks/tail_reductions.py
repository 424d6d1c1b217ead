"""Which reductions the exact training tail takes in channels_last, eager: per-sample norm kernels or whole tensors.

The tail (``timm_sae.tail``) needs per-(n, c) spatial sums of a channels_last ``z`` in its forward (the squeeze and
BatchNorm's statistics) and backward (``sum g``, ``sum g (z - mu)``). BatchNorm's kernels compute per-channel sums
in one read with the channels innermost, so the tail calls them once per sample; whole-tensor reductions (one sum
for the per-(n, c) means beside BatchNorm's statistics over the batch; the backward's sums over a centred
temporary) make fewer calls but read more. ``timm_sae.tail.PER_SAMPLE_KERNELS_FROM_BYTES`` picks between them by
a sample's size. This script times one tail, forward + backward, both ways for the last-norm shapes of
saeresnet18 and saeresnet50 (training batch 8, 224 px), interleaved, and reports the median over rounds of
per-sample time / whole-tensor time (> 1: the whole-tensor form is faster) and which form the threshold picks.

    python benchmarks/tail_reductions.py        # writes benchmarks/results/tail_reductions_cpu.{json,md}
"""
import argparse
import datetime
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# run as a file (python benchmarks/tail_reductions.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR
from benchmarks.environment import command_line, environment, write_report
from timm_sae import SqueezeAggregatedExcitation, tail
from timm_sae.measure import median_ratio, quartiles, time_interleaved

# (model, stages): the last norm's (channels, map size) of each stage at 224 px
SHAPES: Dict[str, List[Tuple[int, int]]] = {
    'saeresnet18': [(64, 56), (128, 28), (256, 14), (512, 7)],
    'saeresnet50': [(256, 56), (512, 28), (1024, 14), (2048, 7)],
}
FORMS = {'per-sample kernels': 0, 'whole tensors': 1 << 62}  # the threshold that forces each form


def tail_step(channels: int, size: int, batch_size: int, threshold: int) -> Callable[[], None]:
    """One tail's forward + backward on a channels_last fp32 ``z``, the reductions forced by ``threshold``."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, channels, size, size)
    z = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last).requires_grad_()
    shortcut = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    norm = nn.BatchNorm2d(channels).train()
    gate = tail.gate_of(SqueezeAggregatedExcitation(channels))
    assert gate is not None
    grad = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        saved = tail.PER_SAMPLE_KERNELS_FROM_BYTES
        tail.PER_SAMPLE_KERNELS_FROM_BYTES = threshold
        try:
            tail.gated_tail(z, norm, gate, shortcut).backward(grad)
        finally:
            tail.PER_SAMPLE_KERNELS_FROM_BYTES = saved
    return step


def markdown(report: dict) -> str:
    settings = report['settings']
    lines = [
        '# The exact tail\'s reductions in channels_last: per-sample norm kernels or whole tensors', '',
        f"`{report['command']}`", '',
        f"{report['hardware']['cpu']}, {report['hardware']['torch_threads']} torch threads; "
        + ', '.join(f'{k} {v}' for k, v in report['versions'].items()) + '.', '',
        f"One tail (`timm_sae.tail.gated_tail`, SaE gate), forward + backward, fp32, channels_last, batch "
        f"{settings['batch_size']}; {settings['rounds']} interleaved rounds of {settings['calls']} calls. Ratio: "
        'median over rounds of per-sample time / whole-tensor time (> 1: whole tensors faster), quartiles in '
        f"brackets. Threshold: `PER_SAMPLE_KERNELS_FROM_BYTES` = {settings['threshold_bytes']:,} bytes a sample.", '',
        '| model | z (N, C, H, W) | sample MiB | per-sample ms | whole-tensor ms | ratio | the threshold picks |',
        '|---|---|---:|---:|---:|---:|---|',
    ]
    for row in report['results']:
        lines.append(
            f"| {row['model']} | {tuple(row['shape'])} | {row['sample_bytes'] / 2 ** 20:.2f} | "
            f"{row['per-sample kernels_ms']:.3f} | {row['whole tensors_ms']:.3f} | {row['ratio']:.3f} "
            f"[{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] | {row['picked']} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=21)
    parser.add_argument('--calls', type=int, default=10, help='calls per form per round')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'tail_reductions_cpu.json')
    args = parser.parse_args(argv)
    results = []
    for model, shapes in SHAPES.items():
        for channels, size in shapes:
            steps = {}
            for form, threshold in FORMS.items():
                step = tail_step(channels, size, args.batch_size, threshold)
                steps[form] = lambda step=step: [step() for _ in range(args.calls)]
            times = time_interleaved(steps, rounds=args.rounds, warmup=2)
            per_sample, whole = times['per-sample kernels'], times['whole tensors']
            q1, q3 = quartiles([p / w for p, w in zip(per_sample, whole, strict=True)])
            row_shape = (args.batch_size, channels, size, size)
            row = {
                'model': model, 'shape': list(row_shape), 'sample_bytes': channels * size * size * 4,
                'per-sample kernels_ms': 1e3 * statistics.median(per_sample) / args.calls,
                'whole tensors_ms': 1e3 * statistics.median(whole) / args.calls,
                'ratio': median_ratio(per_sample, whole), 'ratio_q1': q1, 'ratio_q3': q3,
                'picked': 'per-sample kernels' if tail.per_sample_kernels(torch.empty(row_shape))
                else 'whole tensors',
            }
            results.append(row)
            print(row, flush=True)
    versions, hardware = environment('cpu')
    report = {
        'command': command_line(__file__, sys.argv[1:] if argv is None else argv),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'versions': versions, 'hardware': hardware,
        'settings': {'batch_size': args.batch_size, 'rounds': args.rounds, 'calls': args.calls,
                     'threshold_bytes': tail.PER_SAMPLE_KERNELS_FROM_BYTES},
        'results': results,
    }
    write_report(args.out, report, markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
