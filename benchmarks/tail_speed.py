"""The exact training tail against timm's form, tail by tail, over every block of saeresnet18 and saeresnet50.

A whole training step of saeresnet18 spends a few percent of its time in the eight blocks' tails, so the whole
model's ratio (``speed.py``) cannot separate a tail that is a tenth faster from one that is not. This script times
the tails themselves: one tail, forward + backward, with the exact tail (``timm_sae.tail.gated_tail``) and with
timm's form (BatchNorm, the SaE layer's own forward ``x (1 + s)``, the residual add and ReLU in place, as
autograd records them), interleaved, at the last-norm shape of each stage (training batch 8, 224 px), in NCHW
and channels_last. Each model's total weighs every stage by its number of blocks. Ratio: median over rounds of
timm-form time / exact-tail time (> 1: the exact tail is faster).

    python benchmarks/tail_speed.py        # writes benchmarks/results/tail_speed_cpu.{json,md}
"""
import contextlib
import sys
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional, Tuple
from unittest import mock

# run as a file (python benchmarks/tail_speed.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
from torch import nn

from benchmarks.tail_reductions import compare, header, parse_args, write
from timm_sae import tail

BLOCKS_PER_STAGE: Dict[str, Tuple[int, ...]] = {'saeresnet18': (2, 2, 2, 2), 'saeresnet50': (3, 4, 6, 3)}
LAYOUTS = {'NCHW': torch.contiguous_format, 'channels_last': torch.channels_last}


def timm_form(
        z: torch.Tensor, norm: nn.Module, gate: tail.Gate, shortcut: torch.Tensor,
        drop_path: Optional[nn.Module] = None,
) -> torch.Tensor:
    """The SE form of the tail, as ``SqueezeAggregatedExcitation.forward`` and timm's block compute it (the gated
    map a new tensor; the residual add and ReLU in place on it)."""
    x = norm(z)
    squeeze = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    s = gate.excitation(squeeze)
    scale = s + 1. if gate.residual else s
    out = x * scale[:, :, None, None]
    out += shortcut
    return torch.relu_(out)


FORMS: Dict[str, Callable[[], ContextManager[object]]] = {
    'timm form': lambda: mock.patch.object(tail, 'gated_tail', timm_form),
    'exact tail': contextlib.nullcontext,
}


def totals(rows: List[dict]) -> List[dict]:
    """Per model and layout: the tails of all its blocks, each stage's median times weighed by its blocks."""
    out = []
    for model, blocks in BLOCKS_PER_STAGE.items():
        for layout in LAYOUTS:
            stages = [row for row in rows if row['model'] == model and row['layout'] == layout]
            sums = {form: sum(n * row[f'{form}_ms'] for n, row in zip(blocks, stages, strict=True)) for form in FORMS}
            out.append({'model': model, 'layout': layout, 'blocks': sum(blocks),
                        **{f'{form}_ms': ms for form, ms in sums.items()},
                        'ratio': sums['timm form'] / sums['exact tail']})
    return out


def markdown(report: dict) -> str:
    lines = header(report, 'The exact training tail against timm\'s form, tail by tail', 'NCHW and channels_last')
    lines[-1] += (
        'median over rounds of timm-form time / exact-tail time (> 1: the exact tail is faster), quartiles in '
        'brackets. Timm\'s form: BatchNorm, the SaE layer\'s forward, add and ReLU in place, as autograd records '
        'them.')
    lines += ['', '| model | layout | z (N, C, H, W) | timm form ms | exact tail ms | ratio |',
              '|---|---|---|---:|---:|---:|']
    for row in report['results']:
        lines.append(
            f"| {row['model']} | {row['layout']} | {tuple(row['shape'])} | {row['timm form_ms']:.3f} | "
            f"{row['exact tail_ms']:.3f} | {row['ratio']:.3f} [{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] |")
    lines += ['', 'All the tails of a model (each stage\'s median times weighed by its number of blocks):', '',
              '| model | layout | blocks | timm form ms | exact tail ms | ratio |', '|---|---|---:|---:|---:|---:|']
    for row in totals(report['results']):
        lines.append(f"| {row['model']} | {row['layout']} | {row['blocks']} | {row['timm form_ms']:.3f} | "
                     f"{row['exact tail_ms']:.3f} | {row['ratio']:.3f} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], 'tail_speed_cpu.json')
    results = []
    for layout, memory_format in LAYOUTS.items():
        for row in compare(FORMS, memory_format, args.batch_size, args.rounds, args.calls):
            results.append({'layout': layout, **row})
    write(__file__, argv, args, results, markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
