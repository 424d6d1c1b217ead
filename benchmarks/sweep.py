"""The sweep runner: the missing runs of a study, resumably, in one process or several, and its results file."""
import argparse
import concurrent.futures as futures
import functools
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import REPO_ROOT
from benchmarks.environment import command_line, hardware, versions
from benchmarks.fashion_mnist import DEFAULT_DATA_DIR, DeviceData, load_fashion_mnist, to_device_data

Run = Tuple[str, int]  # (configuration, seed)
# A sweep's job: (run, data on the device, progress-bar position) -> the run's record. It must pickle (a
# module-level function or a functools.partial of one) to reach worker processes.
RunJob = Callable[[Run, DeviceData, int], Dict[str, Any]]

# Worker processes (spawn) keep the data set on their device between runs.
_WORKER: Dict[str, Any] = {}


def _init_worker(data_dir: str, quick: bool, device: str, threads: int) -> None:
    """Load the data once per worker process."""
    torch.set_num_threads(threads)
    if device.startswith('cuda'):
        torch.backends.cudnn.benchmark = True
    _WORKER['data'] = to_device_data(load_fashion_mnist(Path(data_dir)), quick, torch.device(device))


def _worker_run(run_job: RunJob, run: Run, position: int) -> Dict[str, Any]:
    """Train one run in a worker process."""
    return run_job(run, _WORKER['data'], position)


def as_json(document: Dict[str, Any]) -> Dict[str, Any]:
    """``document`` as it reads back from JSON (tuples become lists), so that it compares equal to a stored one."""
    return json.loads(json.dumps(document))


def load_results(path: Path, protocol: Dict[str, Any]) -> Dict[str, Any]:
    """Existing results at ``path`` (checked to share ``protocol``), or an empty results document."""
    if not path.exists():
        return {'protocol': protocol, 'runs': [], 'invocations': []}
    results = json.loads(path.read_text())
    if results.get('protocol') != protocol:
        differing = sorted(k for k in set(protocol) | set(results.get('protocol', {}))
                           if protocol.get(k) != results.get('protocol', {}).get(k))
        raise SystemExit(f'{path} holds runs of a different protocol (differs in: {", ".join(differing)}); '
                         f'pass another --results to keep both')
    return results


def write_results(path: Path, results: Dict[str, Any]) -> None:
    """Rewrite the results JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(results, indent=1) + '\n')
    os.replace(tmp, path)


def refresh_summary(results: Dict[str, Any], requested: Sequence[Run]) -> None:
    """Update the top-level fields derived from the runs and invocations."""
    done = {(r['config'], r['seed']) for r in results['runs']}
    invocations = results['invocations']
    results['missing'] = [{'config': c, 'seed': s} for c, s in requested if (c, s) not in done]
    results['versions'] = invocations[-1]['versions']
    results['hardware'] = sorted({i['hardware'] for i in invocations})
    results['commands'] = [i['command'] for i in invocations]
    results['wall_time_s'] = round(sum(i['wall_time_s'] for i in invocations), 1)


@dataclass(frozen=True)
class SweepPaths:
    """Default results file and checkpoint folder of a sweep script, for full and --quick sweeps."""
    results: Path
    checkpoint_dir: Path
    quick_results: Path
    quick_checkpoint_dir: Path


def sweep_parser(description: str, quick_help: str, paths: SweepPaths, epochs_help: str = 'default 15; 1 with --quick'
                 ) -> argparse.ArgumentParser:
    """The options every sweep script has (finish with ``resolve_sweep_args``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help=quick_help)
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--seeds', type=int, default=None, help='seeds 0..N-1 (default 3; 1 with --quick)')
    parser.add_argument('--epochs', type=int, default=None, help=epochs_help)
    parser.add_argument('--workers', type=int, default=1, help='runs trained concurrently, one process each')
    parser.add_argument('--time-budget', type=float, default=None, metavar='SECONDS',
                        help='start no new run after this many seconds (running ones finish)')
    parser.add_argument('--results', type=Path, default=None,
                        help=f'results JSON (default {paths.results.relative_to(REPO_ROOT)}; '
                             f'{paths.quick_results.relative_to(REPO_ROOT)} with --quick)')
    parser.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument('--checkpoint-dir', type=Path, default=None,
                        help=f'default {paths.checkpoint_dir.relative_to(REPO_ROOT)} '
                             f'({paths.quick_checkpoint_dir.relative_to(REPO_ROOT)} with --quick)')
    return parser


def resolve_sweep_args(parser: argparse.ArgumentParser, args: argparse.Namespace, paths: SweepPaths,
                       at_least_one: Sequence[str] = ('seeds', 'epochs', 'workers')) -> argparse.Namespace:
    """Fill in the defaults of ``sweep_parser``'s options (--quick ones with --quick) and check them."""
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    args.epochs = args.epochs if args.epochs is not None else (1 if args.quick else 15)
    args.results = args.results or (paths.quick_results if args.quick else paths.results)
    args.checkpoint_dir = args.checkpoint_dir or (paths.quick_checkpoint_dir if args.quick else paths.checkpoint_dir)
    for name in at_least_one:
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device')
    return args


def run_sweep(
        command: str, args: argparse.Namespace, data: Dict[str, np.ndarray],
        results: Dict[str, Any], requested: Sequence[Run], run_job: RunJob, started: float,
        ready: Callable[[Run, Set[Run]], bool] = lambda run, done: True) -> Dict[str, Any]:
    """Train the runs of ``requested`` that ``results`` lacks, in order, each once ``ready(run, finished runs)``,
    with ``args.workers`` processes; ``results`` is rewritten to ``args.results`` after every finished run.
    ``command`` is the invocation's command line, ``started`` the ``time.perf_counter()`` at which it began. The
    results document."""
    device = torch.device(args.device)
    invocation = {
        'command': command,
        'started_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'device': args.device, 'workers': args.workers, 'hardware': hardware(device), 'versions': versions(),
        'wall_time_s': 0., 'runs_finished': 0, 'stopped_by_time_budget': False,
    }
    results['invocations'].append(invocation)
    done = {(r['config'], r['seed']) for r in results['runs']}
    pending = [run for run in requested if run not in done]
    todo = len(pending)

    def record(run: Dict[str, Any]) -> None:
        results['runs'].append(run)
        done.add((run['config'], run['seed']))
        invocation['runs_finished'] += 1
        invocation['wall_time_s'] = round(time.perf_counter() - started, 1)
        refresh_summary(results, requested)
        write_results(args.results, results)

    def next_run() -> Optional[Run]:
        """The first pending run that is ready, taken off the list; None when out of time or none is ready."""
        over = args.time_budget is not None and time.perf_counter() - started > args.time_budget
        invocation['stopped_by_time_budget'] |= over
        run = None if over else next((r for r in pending if ready(r, done)), None)
        if run is not None:
            pending.remove(run)
        return run

    print(f'{len(requested) - todo} of {len(requested)} runs already in {args.results}; '
          f'{todo} to go on {args.device} with {args.workers} worker(s)', file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    errors: List[str] = []
    with tqdm(total=todo, desc='runs', unit='run', position=0, dynamic_ncols=True) as runs_bar:
        if args.workers == 1:
            if args.device == 'cuda':
                torch.backends.cudnn.benchmark = True
            device_data = to_device_data(data, args.quick, device)
            while (run := next_run()) is not None:
                record(run_job(run, device_data, 1))
                runs_bar.update()
        else:
            free_slots = list(range(args.workers, 0, -1))
            running: Dict[futures.Future, Tuple[Run, int]] = {}
            with futures.ProcessPoolExecutor(
                    args.workers, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker,
                    initargs=(str(args.data_dir), args.quick, args.device, threads)) as pool:
                while True:
                    while free_slots and not errors and (run := next_run()) is not None:
                        slot = free_slots.pop()
                        running[pool.submit(_worker_run, run_job, run, slot)] = (run, slot)
                    if not running:
                        break
                    finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in finished:
                        (config, seed), slot = running.pop(future)
                        free_slots.append(slot)
                        try:
                            record(future.result())
                        except Exception as e:  # noqa: BLE001 - let the running ones finish, then report
                            errors.append(f'{config} seed {seed}: {type(e).__name__}: {e}')
                        runs_bar.update()
    invocation['wall_time_s'] = round(time.perf_counter() - started, 1)
    refresh_summary(results, requested)
    write_results(args.results, results)
    if errors:
        raise RuntimeError('runs failed:\n' + '\n'.join(errors))
    missing = len(results['missing'])
    print(f'{len(requested) - missing} of {len(requested)} runs done, results in {args.results}'
          + (f'; {missing} missing (rerun the same command to resume)' if missing else ''), file=sys.stderr)
    return results


def sweep_main(
        script: str, argv: Optional[Sequence[str]], parse_args: Callable[[List[str]], argparse.Namespace],
        build_protocol: Callable[[argparse.Namespace, Dict[str, np.ndarray]], Dict[str, Any]],
        requested_runs: Callable[[argparse.Namespace], List[Run]], job: Callable[..., Dict[str, Any]],
        ready: Callable[[Run, Set[Run]], bool] = lambda run, done: True,
        check: Callable[[Dict[str, Any], argparse.Namespace, List[Run]], None] = lambda results, args, runs: None
) -> Dict[str, Any]:
    """The main of a sweep script (``script``, its ``__file__``): parse ``argv``, load the data, the protocol and
    the results so far, ``check`` them, and train the runs of ``requested_runs(args)`` that are missing with
    ``job(run, data, position, protocol=..., checkpoint_dir=...)`` (see ``run_sweep``); the results document."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_fashion_mnist(args.data_dir)
    protocol = as_json(build_protocol(args, data))
    results = load_results(args.results, protocol)
    requested = requested_runs(args)
    check(results, args, requested)
    run_job = functools.partial(job, protocol=protocol, checkpoint_dir=args.checkpoint_dir)
    return run_sweep(command_line(script, argv), args, data, results, requested, run_job, started, ready)
