"""Full-width passes per block and kept activation memory: what the block tail costs, independent of the machine.

Passes: for each aten op that runs in one block (eager), its tensor inputs and outputs of the block output's size,
each one read or one write of a full-width feature map; ops that only make a view move no data and are not
counted (the method of timm-sae's design brief). Eval under no_grad, and training forward + backward. Kept
memory: the activations one training forward of the whole model keeps for the backward
(``benchmarks/kept_memory.py``), NCHW and channels_last. ``saeresnet50 (timm tail)`` is the same model with
``timm_sae.set_fast_tail(model, False)``: the SaE blocks as they ran before ``timm_sae.tail``;
``seresnet50 (accelerated)`` is timm's seresnet50 after ``timm_sae.accelerate(model)``.

    python benchmarks/passes.py --doc docs/speed.md

Writes ``benchmarks/results/passes.json`` and ``passes.md`` (generated from it) and, with --doc, the doc's
``passes`` section.
"""
import argparse
import datetime
import sys
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ''):  # run as a file (python benchmarks/passes.py): import the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import timm_sae  # noqa: F401  (registers the SaE models)
from benchmarks.common import RESULTS_DIR, repo_name, update_doc_section
from benchmarks.environment import command_line, environment, write_report
from benchmarks.kept_memory import kept_activation_bytes
from timm_sae import accelerate, set_fast_tail

MODELS = ('resnet50', 'seresnet50', 'seresnet50 (accelerated)', 'saeresnet50 (timm tail)', 'saeresnet50',
          'resnet50d', 'ecaresnet50d', 'ecaresnet50d (accelerated)')
BLOCKS = ('layer3.1', 'layer2.0')
# each group's first model is the plain twin the ratios are taken to
KEPT_GROUPS = (
    ('resnet50', 'seresnet50', 'seresnet50 (accelerated)', 'saeresnet50 (timm tail)', 'saeresnet50'),
    ('resnext50_32x4d', 'seresnext50_32x4d', 'seresnext50_32x4d (accelerated)', 'saeresnext50_32x4d (timm tail)',
     'saeresnext50_32x4d'),
    ('resnet50d', 'ecaresnet50d', 'ecaresnet50d (accelerated)'),
)
VIEW_OPS = ('detach', 'alias', '_unsafe_view')


class FullWidthCount(TorchDispatchMode):
    """Counts the reads and writes of tensors with ``numel`` elements by the aten ops that run inside it."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.reads, self.writes = numel, 0, 0
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.__name__.split('.')[0] in VIEW_OPS:
            return out
        reads = sum(isinstance(a, torch.Tensor) and a.numel() == self.numel for a in tree_flatten((args, kwargs))[0])
        writes = sum(isinstance(o, torch.Tensor) and o.numel() == self.numel for o in tree_flatten(out)[0])
        if reads or writes:
            self.ops.append(f'{func.__name__} {reads}r{writes}w')
        self.reads += reads
        self.writes += writes
        return out


def build(label: str, device: str = 'cpu') -> torch.nn.Module:
    """A seeded model by label: a timm name, ``<name> (timm tail)`` or ``<name> (accelerated)``."""
    torch.manual_seed(0)
    name, _, variant = label.partition(' (')
    model = timm.create_model(name, device=device)
    if variant == 'timm tail)':
        set_fast_tail(model, False)
    elif variant == 'accelerated)':
        accelerate(model)
    return model


def count_block(label: str, block: str, train: bool, size: int = 56, batch: int = 4) -> Dict[str, object]:
    """Full-width reads and writes of one block: eval under no_grad, or training forward + backward."""
    blk = build(label, device='meta').get_submodule(block).to_empty(device='cpu').train(train)
    with torch.no_grad():  # the values do not change the ops, but keep them finite and seeded
        for name, tensor in list(blk.named_parameters()) + list(blk.named_buffers()):
            if name.endswith('num_batches_tracked'):
                tensor.zero_()
            elif name.endswith('running_var'):
                tensor.fill_(1.)
            else:
                tensor.normal_(0., 0.1)
    stage = int(block.split('.')[0].removeprefix('layer'))
    side = size // 2 ** (stage - 1)
    x = torch.randn(batch, blk.conv1.in_channels, side, side)
    with torch.no_grad():
        numel = blk(x.clone()).numel()
    counter = FullWidthCount(numel)
    if train:
        x.requires_grad_(True)
        with counter:
            blk(x).sum().backward()
    else:
        with torch.no_grad(), counter:
            blk(x)
    return {'reads': counter.reads, 'writes': counter.writes, 'ops': counter.ops}


def kept_mib(label: str, channels_last: bool, batch: int = 4, size: int = 128) -> float:
    model = build(label).train()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return kept_activation_bytes(model, x) / 2 ** 20


def markdown(report: dict) -> str:
    """The tables of a report (generated from the JSON alone)."""
    lines = [
        f"From `{report['source']}`, written by `{report['command']}`; python {report['versions']['python']}, "
        f"torch {report['versions']['torch']}, timm {report['versions']['timm']}. Counts do not depend on the "
        'machine.',
        '',
        'Full-width reads / writes per block (eval: no_grad; train: forward + backward; 4 images, 56 px):',
        '',
        '| model | ' + ' | '.join(f'{block} {mode}' for block in report['blocks'] for mode in ('eval', 'train')) + ' |',
        '|---|' + '---:|' * (2 * len(report['blocks'])),
    ]
    for label, per_block in report['passes'].items():
        cells = [f"{per_block[block][mode]['reads']} / {per_block[block][mode]['writes']}"
                 for block in report['blocks'] for mode in ('eval', 'train')]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        '',
        'Activation memory one training forward keeps for the backward (4 images, 128 px), MiB and ratio to the '
        'group\'s plain ResNet:',
        '',
        '| model | NCHW MiB | NCHW ratio | channels_last MiB | channels_last ratio |',
        '|---|---:|---:|---:|---:|',
    ]
    for group in report['kept_mib']:
        base = next(iter(group.values()))
        for label, by_format in group.items():
            lines.append(f"| {label} | {by_format['nchw']:.1f} | {by_format['nchw'] / base['nchw']:.3f} | "
                         f"{by_format['channels_last']:.1f} | "
                         f"{by_format['channels_last'] / base['channels_last']:.3f} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'passes.json')
    parser.add_argument('--doc', type=Path, help='also rewrite the "passes" section of this doc')
    args = parser.parse_args(argv)
    versions, hardware = environment('cpu')
    passes = {label: {block: {mode: count_block(label, block, mode == 'train') for mode in ('eval', 'train')}
                      for block in BLOCKS} for label in MODELS}
    kept: List[Dict[str, Dict[str, float]]] = [
        {label: {fmt: kept_mib(label, fmt == 'channels_last') for fmt in ('nchw', 'channels_last')}
         for label in group} for group in KEPT_GROUPS]
    report = {
        'command': command_line(__file__, argv),
        'source': repo_name(args.out),
        'created': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'versions': versions, 'hardware': hardware, 'blocks': list(BLOCKS), 'passes': passes, 'kept_mib': kept,
    }
    write_report(args.out, report, markdown)
    if args.doc:
        update_doc_section(args.doc, 'passes', markdown(report), 'benchmarks/passes.py')
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
