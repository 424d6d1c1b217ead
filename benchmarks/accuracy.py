"""Does SaE help? Train ResNet-18 variants on Fashion-MNIST under one fixed protocol and record the results.

    python benchmarks/accuracy.py                       # 14 configurations x 3 seeds x 15 epochs
    python benchmarks/accuracy.py --device cuda --workers 6
    python benchmarks/accuracy.py --configs saeresnet18_s34 saeresnet18_rd8    # some configurations only
    python benchmarks/accuracy.py --quick --results /tmp/quick.json    # smoke run

Every run trains ``timm.create_model(model, in_chans=1, num_classes=10, **kwargs)`` from scratch. 5,000
training images, held out by a fixed split independent of the run seed, pick the checkpoint (best
validation top-1); the 10,000 test images are evaluated every epoch for the curve plot only, and the
reported test numbers are those of the validation-chosen epoch. The whole data pipeline lives on the
training device as tensors (no DataLoader); ``--workers N`` trains N runs at a time in separate
processes so that small models fill a GPU. The results JSON is rewritten atomically after every
finished run, and runs already in it (same configuration, seed and protocol) are skipped, so a sweep of
some configurations adds its runs to a results file that holds others.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file (python benchmarks/accuracy.py): import the package from the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import REPO_ROOT
from benchmarks.fashion_mnist import DeviceData, fmnist_protocol
from benchmarks.sweep import Run, SweepPaths, resolve_sweep_args, sweep_main, sweep_parser
from benchmarks.training import train_run

PATHS = SweepPaths(
    results=REPO_ROOT / 'benchmarks' / 'results' / 'accuracy.json',
    checkpoint_dir=REPO_ROOT / 'runs' / 'fmnist',
    quick_results=REPO_ROOT / 'runs' / 'fmnist' / 'quick' / 'accuracy_quick.json',
    quick_checkpoint_dir=REPO_ROOT / 'runs' / 'fmnist' / 'quick',
)

# name -> (timm model, create_model kwargs). Cardinality 4, branch width 1/32 and SaE in all four stages are
# saeresnet18 itself.
CONFIGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'resnet18': ('resnet18', {}),
    'seresnet18': ('seresnet18', {}),
    'saeresnet18': ('saeresnet18', {}),
    'resnet18_eca': ('resnet18', {'block_args': {'attn_layer': 'eca'}}),
    'resnet18_cbam': ('resnet18', {'block_args': {'attn_layer': 'cbam'}}),
    'saeresnet18_k1': ('saeresnet18', {'sae_cardinality': 1}),
    'saeresnet18_k2': ('saeresnet18', {'sae_cardinality': 2}),
    'saeresnet18_k8': ('saeresnet18', {'sae_cardinality': 8}),
    'saeresnet18_noresidual': ('saeresnet18', {'sae_residual': False}),
    # placement: SaE in some stages only, the other blocks plain BasicBlocks
    'saeresnet18_s12': ('saeresnet18', {'sae_stages': (1, 2)}),
    'saeresnet18_s34': ('saeresnet18', {'sae_stages': (3, 4)}),
    'saeresnet18_s4': ('saeresnet18', {'sae_stages': (4,)}),
    # branch width d / C (default 1/32)
    'saeresnet18_rd16': ('saeresnet18', {'sae_rd_ratio': 1 / 16}),
    'saeresnet18_rd8': ('saeresnet18', {'sae_rd_ratio': 1 / 8}),
}
PLACEMENT_AND_WIDTH = ('saeresnet18_s12', 'saeresnet18_s34', 'saeresnet18_s4', 'saeresnet18_rd16', 'saeresnet18_rd8')
QUICK_CONFIGS = ('resnet18', 'saeresnet18')
CHECKPOINT_RUNS = {('saeresnet18', 0)}  # (config, seed) whose val-chosen checkpoint is saved


def train_config(run: Run, data: DeviceData, position: int, protocol: Dict[str, Any],
                 checkpoint_dir: Path) -> Dict[str, Any]:
    """This benchmark's job: one configuration and seed, its checkpoint saved if it is in ``CHECKPOINT_RUNS``."""
    config, seed = run
    model_name, kwargs = CONFIGS[config]
    return train_run(config, model_name, kwargs, seed, protocol, data, checkpoint_dir, position,
                     save_checkpoint=run in CHECKPOINT_RUNS)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Command-line options, with the --quick defaults filled in."""
    parser = sweep_parser(__doc__.split('\n\n')[0],
                          f'smoke run: configs {", ".join(QUICK_CONFIGS)}, 1 seed, 1 epoch, a small subset, batch 64',
                          PATHS)
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=None, metavar='NAME',
                        help=f'configurations to run (default all): {", ".join(CONFIGS)}')
    args = resolve_sweep_args(parser, parser.parse_args(argv), PATHS)
    args.configs = args.configs or list(QUICK_CONFIGS if args.quick else CONFIGS)
    return args


def requested_runs(args: argparse.Namespace) -> List[Run]:
    """The runs of the sweep, seed-major: an interrupted sweep stays balanced."""
    return [(config, seed) for seed in range(args.seeds) for config in args.configs]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the requested sweep (skipping finished runs); the results document."""
    return sweep_main(__file__, argv, parse_args, fmnist_protocol, requested_runs, train_config)


if __name__ == '__main__':
    main()
