"""What torch.compile makes of one ResNet block: kernels, memory traffic and time, SaE vs SE vs plain.

Compiles one identity-shortcut block (``layer3.1`` by default) of each model with Inductor, channels_last
or NCHW, in eval (inference) and in train mode (forward + backward), and reads Inductor's own metrics: the
number of kernels it generated and the bytes its graphs read and write (``graph.count_bytes()``, logged under
``TORCH_LOGS=inductor_metrics``), given in units of the block's full-width output tensor. These counts
do not depend on the machine's speed; convolutions and matmuls are external kernels, counted by Inductor
as their inputs and outputs. Then the compiled blocks are timed in turn within each round (A B C D, ...),
and each block's time ratio to resnet50's is the median over rounds.

    python benchmarks/inductor_block.py                       # writes benchmarks/results/inductor_block_cpu.{json,md}
    python benchmarks/inductor_block.py --memory-format contiguous --out benchmarks/results/inductor_block_cpu_nchw.json
    python benchmarks/inductor_block.py --device cuda --batch-size 128 --precision bf16
"""
import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# run as a file (python benchmarks/inductor_block.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import timm
import torch
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor import metrics

from benchmarks.common import RESULTS_DIR
from benchmarks.environment import command_line, environment, write_report
from timm_sae import accelerate, set_fast_tail
from timm_sae.measure import median_ratio, quartiles, time_interleaved

# label -> (timm model, how the gated blocks run: '' as timm or the package has it, 'timm tail' with timm's own
# tail (timm_sae.set_fast_tail(block, False)), 'accelerated' after timm_sae.accelerate). ecaresnet50d's layer3.1
# is resnet50's block with ECA (the 'd' changes the stem and the downsampling only).
MODELS = {
    'resnet50': ('resnet50', ''),
    'seresnet50': ('seresnet50', ''),
    'saeresnet50': ('saeresnet50', ''),
    'saeresnet50 (timm tail)': ('saeresnet50', 'timm tail'),
    'seresnet50 (accelerated)': ('seresnet50', 'accelerated'),
    'ecaresnet50d': ('ecaresnet50d', ''),
    'ecaresnet50d (accelerated)': ('ecaresnet50d', 'accelerated'),
}
MEMORY_FORMATS = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}


def block_of(model_name: str, variant: str, path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    block = timm.create_model(model_name).get_submodule(path)
    if variant == 'timm tail':
        set_fast_tail(block, False)
    elif variant == 'accelerated':
        accelerate(block)
    return block


def compile_block(
        block: torch.nn.Module, x: torch.Tensor, train: bool, precision: str, memory_format: torch.memory_format,
) -> Tuple[Callable[[], None], Dict[str, float]]:
    """The compiled block's step (inference, or forward + backward) and Inductor's kernel and traffic counts."""
    torch._dynamo.reset()
    metrics.reset()  # caches off: a graph served from a cache generates no kernels and counts no bytes
    block = block.to(x.device, memory_format=memory_format).train(train)
    compiled = torch.compile(block, backend='inductor')
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')
    if train:
        x = x.clone().requires_grad_()

        def step() -> None:
            with autocast:
                out = compiled(x)
            out.float().sum().backward()
    else:
        def step() -> None:
            with torch.no_grad(), autocast:
                compiled(x)
    step()
    full_width = x.numel() * x.element_size()
    traffic = metrics.num_bytes_accessed / full_width
    return step, {'kernels': metrics.generated_kernel_count, 'full_width_traffic': traffic}


def markdown(report: dict) -> str:
    hardware, settings = report['hardware'], report['settings']
    lines = [
        f"# One block under torch.compile: {settings['block']}", '',
        f"`{report['command']}`", '',
        f"{hardware.get('gpu', hardware['cpu'])}, {hardware['torch_threads']} torch threads; "
        + ', '.join(f'{k} {v}' for k, v in report['versions'].items()) + '.', '',
        f"Input {settings['input']} on {settings['device']}, {settings['precision']}, "
        f"{settings.get('memory_format', 'channels_last')}, Inductor (default mode). Traffic: bytes that the "
        'generated graphs read and write (Inductor\'s count_bytes, external conv kernels included), in units '
        'of the block\'s full-width output tensor (fp32 size); train is forward + backward. Time: the '
        f"median over {settings['rounds']} interleaved rounds of the block's time / resnet50's "
        '(< 1: faster), quartiles in brackets.', '',
        '| model | eval kernels | eval traffic | eval time vs resnet50 | train kernels | train traffic | '
        'train time vs resnet50 |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for label, row in report['results'].items():
        cells = [f"{row[mode]['kernels']} | {row[mode]['full_width_traffic']:.2f} | {row[mode]['time_ratio']:.3f} "
                 f"[{row[mode]['time_ratio_q1']:.2f}, {row[mode]['time_ratio_q3']:.2f}]" for mode in ('eval', 'train')]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--block', default='layer3.1', help='an identity-shortcut block, e.g. layer3.1')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224, help='the model input size the block sees a map of')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32', help='bf16: autocast')
    parser.add_argument('--memory-format', choices=list(MEMORY_FORMATS), default='channels_last')
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS),
                        help='labels to compile (default all); resnet50, the reference, is always included')
    parser.add_argument('--rounds', type=int, default=21)
    parser.add_argument('--calls', type=int, default=30, help='calls per model per round')
    parser.add_argument('--out', type=Path, help='default benchmarks/results/inductor_block_<device>.json')
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / f"inductor_block_{args.device.split(':')[0]}.json"
    torch._logging.set_logs(inductor_metrics=True)  # makes Inductor count the bytes of each graph (logged on stderr)
    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    stage = int(args.block.split('.')[0].removeprefix('layer'))
    size = args.img_size // 2 ** (stage + 1)
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    labels = ['resnet50'] + [label for label in args.models if label != 'resnet50']
    memory_format = MEMORY_FORMATS[args.memory_format]
    results: Dict[str, Dict[str, dict]] = {label: {} for label in labels}
    for mode in ('eval', 'train'):
        steps = {}
        for label in labels:
            block = block_of(*MODELS[label], args.block)
            x = torch.randn(args.batch_size, block.conv1.in_channels, size, size, device=args.device)
            step, results[label][mode] = compile_block(block, x.contiguous(memory_format=memory_format),
                                                       mode == 'train', args.precision, memory_format)
            steps[label] = lambda step=step: [step() for _ in range(args.calls)]
        times = time_interleaved(steps, rounds=args.rounds, warmup=2, sync=sync)
        for label in labels:
            q1, q3 = quartiles([t / r for t, r in zip(times[label], times['resnet50'], strict=True)])
            results[label][mode].update(time_ratio=median_ratio(times[label], times['resnet50']),
                                        time_ratio_q1=q1, time_ratio_q3=q3)
            print(mode, label, results[label][mode], flush=True)
    versions, hardware = environment(args.device)
    report = {
        'command': command_line(__file__, sys.argv[1:] if argv is None else argv),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'versions': versions, 'hardware': hardware,
        'settings': {'block': args.block, 'input': [args.batch_size, x.shape[1], size, size], 'device': args.device,
                     'precision': args.precision, 'memory_format': args.memory_format, 'rounds': args.rounds,
                     'calls_per_round': args.calls},
        'results': results,
    }
    write_report(out, report, markdown, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
