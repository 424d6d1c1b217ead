"""Where the time goes: torch.profiler's top operators per model, for one pair and mode.

Each model of a pair of ``benchmarks/speed.py`` gets the step speed.py times (same build, eager or
``torch.compile`` with a fresh Inductor cache), is warmed up (compiled), and then a few steps are
profiled. Per model the operators with the most self time per step are kept: self CPU time on the
CPU, self device time on a GPU. The table puts the models side by side: every operator that is in
some model's top list, with each model's self time per step and its number of calls per step.
Compiled code is profiled per generated kernel (Inductor's C++ kernels with
``cpp.enable_kernel_profile``; GPU kernels by name).

Usage (from the repository root)::

    python benchmarks/profile_speed.py --pair resnet50 --mode infer-cl --batch-size 16
    python benchmarks/profile_speed.py --pair resnet50 --mode infer-cl --batch-size 16 --compile
    python benchmarks/profile_speed.py --device cuda --pair resnet50 --mode train-cl --batch-size 128 --compile

Writes ``benchmarks/results/profile_<pair>_<mode>_<backend>_<device>.json`` and the markdown table
``.md`` beside it.
"""
import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

# run as a file (python benchmarks/profile_speed.py): import the package from the repository
if __package__ in (None, ''):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
from torch._inductor import config as inductor_config
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import RESULTS_DIR
from benchmarks.environment import command_line, environment, write_report
from benchmarks.speed import (
    COMPILE_BACKENDS,
    Setting,
    backend_label,
    build_step,
    compile_model,
    device_sync,
)
from benchmarks.speed_pairs import MODES, PAIRS


def profile_model(s: Setting, warmup: int, steps: int, top: int) -> dict:
    """Warm up (compile) one model's step, profile ``steps`` steps, keep the ``top`` operators by self time."""
    cuda = s.device.startswith('cuda')
    sync = device_sync(s.device)
    if s.backend == 'eager':
        step, compiled = build_step(s), None
    else:
        step, compiled = compile_model(s)
        compiled.pop('peak_memory_mib')
    for _ in range(warmup):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - start
    key = 'self_device_time_total' if cuda else 'self_cpu_time_total'
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total_us = sum(getattr(e, key) for e in events)
    return {
        'step_ms_profiled': wall / steps * 1e3,
        'self_time_ms_per_step': total_us / steps / 1e3,
        'compile': compiled,
        'top': [{
            'name': e.key,
            'self_ms': getattr(e, key) / steps / 1e3,
            'share': getattr(e, key) / total_us,
            'calls': e.count / steps,
            **({'self_cpu_ms': e.self_cpu_time_total / steps / 1e3} if cuda else {}),
        } for e in events[:top]],
    }


def markdown(report: dict) -> str:
    """The side-by-side table of a profile report (generated from the JSON alone)."""
    st, hw, ver = report['settings'], report['hardware'], report['versions']
    models = report['models']
    labels = list(models)
    names = list(dict.fromkeys(row['name'] for m in models.values() for row in m['top']))
    rows = {label: {row['name']: row for row in m['top']} for label, m in models.items()}
    names.sort(key=lambda n: -max(rows[label][n]['self_ms'] if n in rows[label] else 0. for label in labels))
    gpu = f", GPU {hw['gpu']} (CUDA {hw['cuda']})" if 'gpu' in hw else ''
    lines = [
        f"# Where the time goes: {st['pair']} {st['mode']} {st['backend']} on {st['device']}",
        '',
        f"`{report['command']}`",
        '',
        f"CPU {hw['cpu']} ({hw['cpu_cores']} cores, {hw['torch_threads']} torch threads){gpu}; "
        f"python {ver['python']}, torch {ver['torch']}, timm {ver['timm']}, timm_sae {ver['timm_sae']}. "
        f"{st['precision']}, {st['img_size']} px, batch {st['batch_size']}; {st['steps']} profiled steps after "
        f"{st['warmup']} warm-up.",
        '',
        f"Self {st['time']} time per step in ms (calls per step), the top {st['top']} operators of each model; "
        'an empty cell: not in that model\'s top list. Operators: aten ops in eager mode; in compiled mode also '
        'the generated kernels and graphs (their names carry an index or a hash, so they do not match across models).',
        '',
        '| operator | ' + ' | '.join(labels) + ' |',
        '|---|' + '---:|' * len(labels),
        '| **step (profiled, wall)** | ' + ' | '.join(f"{models[label]['step_ms_profiled']:.2f}" for label in labels)
        + ' |',
        f"| **self {st['time']} time, all operators** | "
        + ' | '.join(f"{models[label]['self_time_ms_per_step']:.2f}" for label in labels) + ' |',
    ]
    if st['backend'] != 'eager':
        lines.append('| **compile s** (calls that compiled, wall) | ' + ' | '.join(
            f"{models[label]['compile']['compile_calls_s']:.1f}" for label in labels) + ' |')
    for name in names:
        cells = [
            f"{rows[label][name]['self_ms']:.2f} ({rows[label][name]['calls']:g})" if name in rows[label] else ''
            for label in labels]
        lines.append(f"| `{name}` | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Top operators by self time, per model of a speed.py pair.')
    parser.add_argument('--pair', choices=list(PAIRS), default='resnet50')
    parser.add_argument('--mode', choices=list(MODES), default='infer-cl')
    parser.add_argument('--compile', action='store_true', help='profile the torch.compile models')
    parser.add_argument('--compile-backend', choices=COMPILE_BACKENDS, default='inductor')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda[:N]')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--precision', choices=['fp32', 'bf16'], help='default: fp32 on cpu, bf16 autocast on cuda')
    parser.add_argument('--warmup', type=int, default=2, help='steps before profiling (after compilation)')
    parser.add_argument('--steps', type=int, default=5, help='profiled steps')
    parser.add_argument('--top', type=int, default=15, help='operators kept per model')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    parser.add_argument('--out', type=Path, help='JSON path (default benchmarks/results/profile_<...>.json)')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    pair, (task, channels_last) = PAIRS[args.pair], MODES[args.mode]
    if task not in pair.tasks:
        raise SystemExit(f'pair {args.pair} has no {task} mode: choose --mode from '
                         f'{[m for m, (t, _) in MODES.items() if t in pair.tasks]}')
    if args.steps < 1 or args.top < 1:
        raise SystemExit('--steps and --top must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith('cuda')
    if cuda:
        torch.backends.cudnn.benchmark = True
    precision = args.precision or ('bf16' if cuda else 'fp32')
    backend = args.compile_backend if args.compile else 'eager'
    inductor_config.cpp.enable_kernel_profile = True  # Inductor's C++ kernels as profiler events

    versions, hardware = environment(args.device)
    models: Dict[str, dict] = {}
    for e in pair.entries:
        print(f'{e.label} ...', flush=True)
        torch._dynamo.reset()
        setting = Setting(e.model, e.bn_folded, e.timm_tail, e.accelerated, e.triton_tail, task, channels_last,
                          backend, args.batch_size, args.img_size, args.device, precision, torch.get_num_threads())
        models[e.label] = profile_model(setting, args.warmup, args.steps, args.top)
        print(f"  {models[e.label]['step_ms_profiled']:.1f} ms per profiled step", flush=True)
    report = {
        'command': command_line(__file__, argv),
        'created': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'versions': versions,
        'hardware': hardware,
        'settings': {
            'pair': args.pair, 'mode': args.mode, 'backend': backend_label(backend), 'device': args.device,
            'precision': precision, 'batch_size': args.batch_size, 'img_size': args.img_size,
            'warmup': args.warmup, 'steps': args.steps, 'top': args.top, 'time': 'device' if cuda else 'CPU',
        },
        'models': models,
    }
    out = args.out or RESULTS_DIR / f"profile_{args.pair}_{args.mode}_{backend}_{args.device.split(':')[0]}.json"
    write_report(out, report, markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
