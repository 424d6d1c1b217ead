"""Speed of SaE vs SE vs plain ResNet, measured side by side.

For each pair (group of twins) and mode (inference or training step, NCHW or channels_last, eager
or ``torch.compile``) the group's models are timed in turn within each round (A B C, A B C, ...)
after a warm-up, and each model's throughput ratio to a reference is the median over rounds of
``t_reference / t_model`` (quartiles of the per-round ratios are kept as the spread).

Compiled modes compile the models one after the other before the interleaved rounds, each with a
fresh Inductor cache (so that no model reuses kernels that another compiled, and no run reuses an
earlier run's): a model is called until a call compiles nothing, and its compile time is the wall
time of the calls that compiled, less as many steady-state steps. Compilations are counted
(TorchDynamo frames and Inductor graphs) during warm-up and timed rounds too: ``late_compiles``
must be 0, else the row is flagged.

Peak memory is measured per model with only that model alive, for building it and its batch and
running warm-up + one step: on the CPU the peak RSS (VmHWM, reset first) of a fresh subprocess
above its RSS before, with glibc's mmap threshold fixed so that freed blocks leave the RSS; on a GPU
``torch.cuda.max_memory_allocated`` above the memory allocated before. Compiled modes: on a GPU the
same, measured in the run (the first call after compilation); none on the CPU (a subprocess would
compile again).

The training step is forward + backward + SGD step (momentum 0.9) on cross-entropy with random
labels. fp32 on the CPU, bf16 autocast on a GPU (``--precision`` overrides).

Usage (from the repository root)::

    python benchmarks/speed.py --device cpu --batch-size 16 --train-batch-size 8 --compile resnet50 resnext50
    python benchmarks/speed.py --device cuda --batch-size 256 --train-batch-size 128 --modes infer-cl train-cl --compile
    python benchmarks/speed.py --quick --compile --compile-backend aot_eager --out /tmp/speed.json  # tiny, for tests

Writes ``benchmarks/results/speed_<device>.json`` (settings, versions, hardware, the exact command,
per-round times, ratios) and the markdown table ``speed_<device>.md`` generated from it
(``benchmarks/speed_report.py`` regenerates the tables, and the speed sections of docs/speed.md).
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file (python benchmarks/speed.py): import the package from the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import timm
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters as dynamo_counters
from torch._inductor import utils as inductor_utils

import timm_sae  # noqa: F401  (registers the SaE models)
from benchmarks.common import RESULTS_DIR
from benchmarks.environment import command_line, environment
from benchmarks.kept_memory import kept_activation_bytes
from benchmarks.speed_pairs import MODES, PAIRS
from benchmarks.speed_report import compile_flags, write_tables
from timm_sae import accelerate, set_fast_tail, set_triton_tail
from timm_sae.fuse import fuse_batchnorm
from timm_sae.measure import describe, median_ratio, quartiles, time_interleaved

MIB = 2 ** 20
TRAIN_STEP = 'forward + backward + SGD step (momentum 0.9), cross-entropy on random labels'
COMPILE_BACKENDS = ('inductor', 'aot_eager')  # aot_eager: traced, no code generated (fast to compile, for tests)
MAX_COMPILE_CALLS = 4
COMPILE_METHOD = (
    'torch.compile(model, backend={backend!r}) in its default mode (the optimizer step is not compiled); '
    'the models are compiled one after the other, each with a fresh Inductor cache, before the interleaved '
    'rounds: each is called until a call compiles nothing, and compile s is the wall time of the calls that '
    'compiled less as many steady-state steps; compilations during warm-up and timed rounds are counted '
    '(late_compiles, 0 for a valid row)')


FULL = dict(
    batch_size=16, train_batch_size=None, img_size=224, rounds=11, warmup=2,
    pairs=['resnet50', 'resnet18', 'resnext50', 'seresnet50', 'ecaresnet50d', 'resnet50_bn_folded'], modes=list(MODES),
    threads=None)
# one thread: tiny ops on threads that other processes keep waiting are slower by orders of magnitude
QUICK = dict(
    batch_size=2, train_batch_size=None, img_size=64, rounds=2, warmup=1, pairs=['resnet18'], modes=['infer-nchw'],
    threads=1)


@dataclass(frozen=True)
class Setting:
    """Everything needed to build one model's step, also in a memory-probe subprocess."""
    model: str
    bn_folded: bool
    timm_tail: bool
    accelerated: bool
    triton_tail: bool
    task: str
    channels_last: bool
    backend: str  # 'eager' or a torch.compile backend
    batch_size: int
    img_size: int
    device: str
    precision: str
    threads: int


def build_model(s: Setting) -> Tuple[torch.nn.Module, torch.Tensor]:
    """A freshly built model in the setting's mode, layout and device, and its fixed random batch."""
    device = torch.device(s.device)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = timm.create_model(s.model)
    if s.timm_tail and not set_fast_tail(model, False):
        raise ValueError(f'{s.model} has no SaE block whose tail could be timm\'s')
    if s.accelerated and not accelerate(model).acceleration.converted:
        raise ValueError(f'{s.model} has no block that timm_sae.accelerate converts')
    if s.triton_tail and not set_triton_tail(model, True):
        raise ValueError(f'{s.model} has no gated block whose tail could take the Triton kernels')
    if s.bn_folded:
        model = fuse_batchnorm(model.eval())
    model = model.to(device=device, memory_format=memory_format)
    model.train(s.task == 'train')
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=device).contiguous(memory_format=memory_format)
    return model, x


def autocast(s: Setting) -> contextlib.AbstractContextManager:
    """bf16 autocast on the setting's device type, or nothing (fp32)."""
    if s.precision == 'bf16':
        return torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def kept_memory_mib(s: Setting) -> float:
    """MiB of activations one training forward keeps for the backward (``benchmarks.kept_memory``, eager)."""
    model, x = build_model(s)
    with autocast(s):
        return kept_activation_bytes(model, x) / MIB


def build_step(s: Setting) -> Callable[[], None]:
    """One inference or training step of a freshly built model on a fixed random batch."""
    model, x = build_model(s)
    run = model if s.backend == 'eager' else torch.compile(model, backend=s.backend)

    if s.task == 'infer':
        def step() -> None:
            with torch.inference_mode(), autocast(s):
                run(x)
        return step

    target = torch.randint(0, model.num_classes, (s.batch_size,), device=x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(s):
            loss = F.cross_entropy(run(x), target)
        loss.backward()
        optimizer.step()
    return step


def device_sync(device: str) -> Callable[[], None]:
    """A function that waits for the device to finish its queued work (a no-op on the CPU)."""
    return torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)


def _rss_reset_peak() -> int:
    """Current RSS in bytes, with the kernel's peak RSS (VmHWM) reset to it (Linux)."""
    Path('/proc/self/clear_refs').write_text('5')
    return _proc_status_bytes('VmRSS')


def _proc_status_bytes(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f'no {field} in /proc/self/status')


def _probe_memory(s: Setting) -> float:
    """MiB of peak memory above what was held before the model was built (model, batch, two steps)."""
    cuda = s.device.startswith('cuda')
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_reset_peak()
    step = build_step(s)
    step()
    step()
    device_sync(s.device)()
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status_bytes('VmHWM')
    del step
    return (peak - base) / MIB


def peak_memory_mib(settings: Dict[str, Setting]) -> Dict[str, float]:
    """Peak memory of each model's steps, one model alive at a time.

    On a GPU in this process, one model after the other; on the CPU in fresh subprocesses (run
    side by side: each one's peak RSS is its own).
    """
    if settings and next(iter(settings.values())).device.startswith('cuda'):
        return {label: _probe_memory(s) for label, s in settings.items()}
    script = str(Path(__file__).resolve())
    # a fixed mmap threshold: glibc returns every freed block from 128 KiB up to the OS, so that the
    # peak RSS follows the live tensors rather than what the allocator happened to keep
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    procs = {
        label: subprocess.Popen(
            [sys.executable, script, '--memory-probe', json.dumps(asdict(s))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for label, s in settings.items()}
    memory = {}
    for label, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f'memory probe of {label} failed:\n{err}')
        memory[label] = float(out.strip().splitlines()[-1])
    return memory


def _spread(reference: Sequence[float], times: Sequence[float]) -> Dict[str, float]:
    """Median and quartiles over rounds of the throughput ratio ``reference[i] / times[i]``."""
    q1, q3 = quartiles([r / t for r, t in zip(reference, times, strict=True)])
    return {'median': median_ratio(reference, times), 'q1': q1, 'q3': q3}


def backend_label(backend: str) -> str:
    """How a backend is named in the report: ``eager`` or ``compile (<torch.compile backend>)``."""
    return backend if backend == 'eager' else f'compile ({backend})'


def compile_events() -> int:
    """Compilations so far in this process: TorchDynamo frames and Inductor graphs (forward, backward)."""
    return dynamo_counters['frames']['total'] + sum(
        dynamo_counters['inductor'][key] for key in ('fxgraph_cache_miss', 'fxgraph_cache_hit', 'fxgraph_cache_bypass'))


def compile_model(s: Setting) -> Tuple[Callable[[], None], dict]:
    """Build one model's compiled step and call it until a call compiles nothing: (step, record).

    Runs with a fresh Inductor cache. The record holds the number and total wall time of the calls
    that compiled, the graphs TorchDynamo made (1 unless the model has graph breaks) and, on a GPU,
    the peak memory of the first call that compiled nothing, above the memory allocated before the
    model was built.
    """
    cuda = s.device.startswith('cuda')
    graphs_before = dynamo_counters['stats']['unique_graphs']
    base = torch.cuda.memory_allocated() if cuda else 0
    record = {'compile_calls': 0, 'compile_calls_s': 0.}
    with inductor_utils.fresh_cache():
        step = build_step(s)
        while True:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            before = compile_events()
            start = time.perf_counter()
            step()
            device_sync(s.device)()
            elapsed = time.perf_counter() - start
            if compile_events() == before:
                break
            if record['compile_calls'] == MAX_COMPILE_CALLS:
                raise RuntimeError(
                    f'{s.model} ({s.task}) still compiles after {MAX_COMPILE_CALLS} calls: run with '
                    'TORCH_LOGS=recompiles to see why')
            record['compile_calls'] += 1
            record['compile_calls_s'] += elapsed
    record['graphs'] = dynamo_counters['stats']['unique_graphs'] - graphs_before
    if not record['compile_calls'] or not record['graphs']:
        raise RuntimeError(f'torch.compile compiled nothing for {s.model} ({s.task}): is TorchDynamo disabled?')
    record['peak_memory_mib'] = (torch.cuda.max_memory_allocated() - base) / MIB if cuda else None
    return step, record


def _counting_late_compiles(step: Callable[[], None], record: dict) -> Callable[[], None]:
    """``step``, adding to ``record['late_compiles']`` the compilations that happen in it."""
    record['late_compiles'] = 0

    def counted() -> None:
        before = compile_events()
        step()
        record['late_compiles'] += compile_events() - before
    return counted


def run_mode(pair_name: str, mode: str, backend: str, args: argparse.Namespace) -> dict:
    """Time one pair in one mode, models interleaved round by round; then memory per model.

    ``backend`` is 'eager' or a torch.compile backend; compiled models are compiled one after the
    other first (see ``compile_model``), then timed like eager ones, compilations counted.
    """
    pair, (task, channels_last) = PAIRS[pair_name], MODES[mode]
    batch_size = args.train_batch_size if task == 'train' else args.batch_size
    settings = {
        e.label: Setting(
            e.model, e.bn_folded, e.timm_tail, e.accelerated, e.triton_tail, task, channels_last, backend, batch_size,
            args.img_size, args.device, args.precision, torch.get_num_threads())
        for e in pair.entries}
    compiled: Dict[str, dict] = {}
    if backend == 'eager':
        steps = {label: build_step(s) for label, s in settings.items()}
    else:
        torch._dynamo.reset()
        steps = {}
        for label, s in settings.items():
            step, compiled[label] = compile_model(s)
            steps[label] = _counting_late_compiles(step, compiled[label])
    times = time_interleaved(steps, rounds=args.rounds, warmup=args.warmup, sync=device_sync(args.device))
    del steps
    if compiled:
        memory = {label: record.pop('peak_memory_mib') for label, record in compiled.items()}
    else:
        memory = peak_memory_mib(settings)
    # what autograd keeps, measured on the eager models (the same bytes whatever the machine)
    kept = {label: kept_memory_mib(s) for label, s in settings.items()} if task == 'train' and not compiled else {}

    models = []
    for e in pair.entries:
        t = times[e.label]
        models.append({
            'label': e.label,
            'model': e.model,
            'bn_folded': e.bn_folded,
            'timm_tail': e.timm_tail,
            'accelerated': e.accelerated,
            'triton_tail': e.triton_tail,
            'round_times_s': t,
            'median_s': statistics.median(t),
            'images_per_s': batch_size / statistics.median(t),
            'throughput_ratio': {r: _spread(times[r], t) for r in pair.references if r != e.label},
            'peak_memory_mib': memory[e.label],
            'memory_ratio': {
                r: memory[e.label] / memory[r] for r in pair.references
                if r != e.label and memory[e.label] is not None},
            'kept_activation_mib': kept.get(e.label),
            'kept_ratio': {r: kept[e.label] / kept[r] for r in pair.references if r != e.label and kept},
        })
        line = f"  {e.label:28s} {models[-1]['images_per_s']:8.1f} img/s  " + '  '.join(
            f"vs {r} {v['median']:.3f}" for r, v in models[-1]['throughput_ratio'].items())
        if kept:
            line += f"  kept {kept[e.label]:.1f} MiB"
        if compiled:
            record = compiled[e.label]
            record['compile_s'] = record['compile_calls_s'] - record['compile_calls'] * statistics.median(t)
            models[-1]['compile'] = record
            line += f"  (compile {record['compile_s']:.1f} s{compile_flags(record)})"
        print(line, flush=True)
    return {
        'pair': pair_name, 'mode': mode, 'task': task,
        'memory_format': 'channels_last' if channels_last else 'nchw',
        'backend': backend_label(backend), 'batch_size': batch_size,
        'references': list(pair.references), 'note': pair.note, 'models': models,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='SaE vs SE vs ResNet speed and memory, side by side.')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda[:N]')
    parser.add_argument('--batch-size', type=int, help='inference batch (default 16; --quick 2)')
    parser.add_argument('--train-batch-size', type=int, help='training batch (default: --batch-size)')
    parser.add_argument('--img-size', type=int, help='input size (default 224; --quick 64)')
    parser.add_argument('--rounds', type=int, help='timed rounds, 5 or more for results (default 11; --quick 2)')
    parser.add_argument('--warmup', type=int, help='warm-up rounds (default 2; --quick 1)')
    parser.add_argument('--modes', nargs='+', choices=list(MODES), help=f'default: all of {list(MODES)}')
    parser.add_argument('--pairs', nargs='+', choices=list(PAIRS), help=f'default: all of {list(PAIRS)}')
    parser.add_argument(
        '--compile', nargs='*', choices=list(PAIRS), metavar='PAIR',
        help='also time torch.compile for these pairs (every selected pair when none is named), after the eager modes')
    parser.add_argument('--compiled-only', action='store_true', help='with --compile: time the compiled modes only')
    parser.add_argument(
        '--compile-backend', choices=COMPILE_BACKENDS, default='inductor',
        help='torch.compile backend (default inductor; aot_eager compiles fast and generates no code, for tests)')
    parser.add_argument('--precision', choices=['fp32', 'bf16'], help='default: fp32 on cpu, bf16 autocast on cuda')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch default; --quick 1)')
    parser.add_argument('--quick', action='store_true', help='tiny settings: one pair, one mode, for tests')
    parser.add_argument('--out', type=Path, help='JSON path (default benchmarks/results/speed_<device>.json)')
    parser.add_argument('--memory-probe', help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.memory_probe:
        setting = Setting(**json.loads(args.memory_probe))
        torch.set_num_threads(setting.threads)
        print(_probe_memory(setting))
        return 0

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.train_batch_size = args.train_batch_size or args.batch_size
    args.precision = args.precision or ('bf16' if args.device.startswith('cuda') else 'fp32')
    if args.rounds < 2:
        raise SystemExit('--rounds must be at least 2 (5 or more for results)')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith('cuda'):
        torch.backends.cudnn.benchmark = True
    compile_pairs = [] if args.compile is None else (args.compile or args.pairs)
    if args.compiled_only and not compile_pairs:
        raise SystemExit('--compiled-only times the compiled modes: name them with --compile')
    backends = [args.compile_backend] if args.compiled_only else ['eager', args.compile_backend]

    versions, hardware = environment(args.device)
    input_size = (3, args.img_size, args.img_size)
    # eager first: the compiled modes, slow to compile, come last
    planned = [
        (pair, mode, backend) for backend in backends for pair in args.pairs
        for mode in args.modes if MODES[mode][0] in PAIRS[pair].tasks and (backend == 'eager' or pair in compile_pairs)]
    cuda = args.device.startswith('cuda')
    triton_pairs = [p for p in args.pairs if any(e.triton_tail for e in PAIRS[p].entries)]
    if triton_pairs and not cuda:
        raise SystemExit(f'{", ".join(triton_pairs)} times the Triton tail, which runs on CUDA tensors only: '
                         'leave it out of --pairs, or give --device cuda')
    names = dict.fromkeys(e.model for p in args.pairs for e in PAIRS[p].entries)
    report = {
        'command': command_line(__file__, argv),
        'created': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'complete': False,
        'versions': versions,
        'hardware': hardware,
        'settings': {
            'device': args.device, 'precision': args.precision, 'img_size': args.img_size,
            'batch_size': args.batch_size, 'train_batch_size': args.train_batch_size,
            'rounds': args.rounds, 'warmup': args.warmup, 'train_step': TRAIN_STEP,
            'cudnn_benchmark': torch.backends.cudnn.benchmark,
            'timing': (
                'seconds per step, models in turn within each round, in balanced orders: each model right after '
                'every other one equally often (timm_sae.measure.balanced_orders)'),
            'kept_memory': (
                'activation memory one eager training forward keeps for the backward: the unique storages autograd '
                'saves plus the tensors still alive after the forward, parameters, buffers, input and output '
                'excluded (benchmarks/kept_memory.py; independent of the machine)'),
            'memory': (
                'torch.cuda.max_memory_allocated above the memory allocated before the model was built '
                '(eager: model, batch, warm-up + one step, one model alive at a time; compiled: the first call '
                'after compilation)' if cuda else
                'peak RSS (VmHWM) of a fresh subprocess above its RSS before the model was built '
                '(model, batch, warm-up + one step; eager only)'),
            **({'compile': COMPILE_METHOD.format(backend=args.compile_backend)} if compile_pairs else {}),
        },
        'planned': [f'{pair} {mode} {backend_label(backend)}' for pair, mode, backend in planned],
        'models': {name: describe(name, input_size) for name in names},
        'results': [],
    }
    out = args.out or RESULTS_DIR / f"speed_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for pair, mode, backend in planned:  # the report is rewritten after each mode: a cut run keeps its results
        print(f'{pair} {mode} {backend_label(backend)}', flush=True)
        start = time.perf_counter()
        report['results'].append(run_mode(pair, mode, backend, args))
        report['results'][-1]['wall_s'] = time.perf_counter() - start
        print(f"  ({report['results'][-1]['wall_s']:.0f} s with warm-up, compilation and memory)", flush=True)
        report['complete'] = len(report['results']) == len(planned)
        hardware['load_average_at_end'] = os.getloadavg()
        out.write_text(json.dumps(report, indent=1) + '\n')
        write_tables([out])
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
