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
from typing import Callable, ContextManager, Dict, List, Optional, Tuple
from unittest import mock

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


def tail_step(
        channels: int, size: int, batch_size: int, memory_format: torch.memory_format,
        form: Callable[[], ContextManager[object]],
) -> Callable[[], None]:
    """One tail's forward + backward on an fp32 ``z`` in ``memory_format``, inside ``form()``, which forces one of
    the tail's choices."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, channels, size, size)
    z = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format).requires_grad_()
    shortcut = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format)
    norm = nn.BatchNorm2d(channels).train()
    gate = tail.gate_of(SqueezeAggregatedExcitation(channels))
    assert gate is not None
    grad = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format)

    def step() -> None:
        with form():
            tail.gated_tail(z, norm, gate, shortcut).backward(grad)
    return step


# the threshold that forces each form
FORMS: Dict[str, Callable[[], ContextManager[object]]] = {
    'per-sample kernels': lambda: mock.patch.object(tail, 'PER_SAMPLE_KERNELS_FROM_BYTES', 0),
    'whole tensors': lambda: mock.patch.object(tail, 'PER_SAMPLE_KERNELS_FROM_BYTES', 1 << 62)}


def compare(
        forms: Dict[str, Callable[[], ContextManager[object]]], memory_format: torch.memory_format,
        batch_size: int, rounds: int, calls: int,
) -> List[dict]:
    """For each shape in ``SHAPES``: the two ``forms``' tail steps interleaved, their median ms a call and the median
    over rounds of first / second (with quartiles)."""
    (first, second), results = forms, []
    for model, shapes in SHAPES.items():
        for channels, size in shapes:
            steps = {}
            for name, form in forms.items():
                step = tail_step(channels, size, batch_size, memory_format, form)
                steps[name] = lambda step=step: [step() for _ in range(calls)]
            times = time_interleaved(steps, rounds=rounds, warmup=2)
            q1, q3 = quartiles([a / b for a, b in zip(times[first], times[second], strict=True)])
            row = {'model': model, 'shape': [batch_size, channels, size, size],
                   'sample_bytes': channels * size * size * 4}
            row.update({f'{name}_ms': 1e3 * statistics.median(times[name]) / calls for name in forms})
            row.update({'ratio': median_ratio(times[first], times[second]), 'ratio_q1': q1, 'ratio_q3': q3})
            results.append(row)
            print(row, flush=True)
    return results


def header(report: dict, title: str, layout: str) -> List[str]:
    """The table's title, command, machine and method lines, up to the ratio's definition."""
    settings = report['settings']
    return [
        f'# {title}', '',
        f"`{report['command']}`", '',
        f"{report['hardware']['cpu']}, {report['hardware']['torch_threads']} torch threads; "
        + ', '.join(f'{k} {v}' for k, v in report['versions'].items()) + '.', '',
        f"One tail (`timm_sae.tail.gated_tail`, SaE gate), forward + backward, fp32, {layout}, batch "
        f"{settings['batch_size']}; {settings['rounds']} interleaved rounds of {settings['calls']} calls. Ratio: "]


def markdown(report: dict) -> str:
    lines = header(report, 'The exact tail\'s reductions in channels_last: per-sample norm kernels or whole tensors',
                   'channels_last')
    lines[-1] += (
        'median over rounds of per-sample time / whole-tensor time (> 1: whole tensors faster), quartiles in '
        f"brackets. Threshold: `PER_SAMPLE_KERNELS_FROM_BYTES` = {report['settings']['threshold_bytes']:,} bytes a "
        'sample.')
    lines += [
        '', '| model | z (N, C, H, W) | sample MiB | per-sample ms | whole-tensor ms | ratio | the threshold picks |',
        '|---|---|---:|---:|---:|---:|---|',
    ]
    for row in report['results']:
        lines.append(
            f"| {row['model']} | {tuple(row['shape'])} | {row['sample_bytes'] / 2 ** 20:.2f} | "
            f"{row['per-sample kernels_ms']:.3f} | {row['whole tensors_ms']:.3f} | {row['ratio']:.3f} "
            f"[{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] | {row['picked']} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[List[str]], description: str, default_out: str) -> argparse.Namespace:
    """The tail benchmarks' options: batch, rounds, calls a round and the JSON path (under benchmarks/results)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=21)
    parser.add_argument('--calls', type=int, default=10, help='calls per form per round')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / default_out)
    return parser.parse_args(argv)


def write(
        script: str, argv: Optional[List[str]], args: argparse.Namespace, results: List[dict],
        markdown_of: Callable[[dict], str], **settings: object,
) -> None:
    """The report (command, time, versions, hardware, settings, rows) as JSON and its table beside it."""
    versions, hardware = environment('cpu')
    report = {
        'command': command_line(script, sys.argv[1:] if argv is None else argv),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'versions': versions, 'hardware': hardware,
        'settings': {'batch_size': args.batch_size, 'rounds': args.rounds, 'calls': args.calls, **settings},
        'results': results,
    }
    write_report(args.out, report, markdown_of)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], 'tail_reductions_cpu.json')
    results = compare(FORMS, torch.channels_last, args.batch_size, args.rounds, args.calls)
    for row in results:
        picked = tail.per_sample_kernels(torch.empty(row['shape']))
        row['picked'] = 'per-sample kernels' if picked else 'whole tensors'
    write(__file__, argv, args, results, markdown, threshold_bytes=tail.PER_SAMPLE_KERNELS_FROM_BYTES)
    return 0


if __name__ == '__main__':
    sys.exit(main())
