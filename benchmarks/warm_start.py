"""Warm starts into SaE: convert trained resnet18 / seresnet18 into saeresnet18 on Fashion-MNIST and fine-tune.

    python benchmarks/warm_start.py                       # 3 seeds: 2 sources x 15 epochs, 4 arms x 5, scratch x 20
    python benchmarks/warm_start.py --device cuda --workers 15
    python benchmarks/warm_start.py --quick --results /tmp/warm_start.json    # smoke run

The sources, resnet18 and seresnet18, are trained exactly as by benchmarks/accuracy.py (its protocol, data
splits and seeds) and their validation-chosen checkpoints are saved. From each source, for the same number
of further epochs E and with one fine-tuning schedule for all: the source is trained on (``*_continued``), or
converted with ``timm_sae.convert.convert_state_dict`` into a saeresnet18 that computes the same function and
fine-tuned (resnet18 into the residual gate ``x * (1 + s)``, seresnet18 into the plain gate ``x * s``). As the
compute-matched reference, saeresnet18 is trained from scratch for 15 + E epochs under the accuracy protocol.
Each conversion is checked before fine-tuning: its test top-1, loss and logits against the source's, in fp32.
Every run reports the test figures of its validation-chosen epoch; epoch 0 (a warm start's starting point) is
evaluated and recorded but is never chosen. The results JSON is rewritten atomically after every finished run,
and an interrupted study resumes where it stopped (the arms start from the saved source checkpoints).
"""
import argparse
import hashlib
import io
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

if __package__ in (None, ''):  # run as a file (python benchmarks/warm_start.py): import the package from the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import REPO_ROOT
from benchmarks.fashion_mnist import BASE_BATCH, DeviceData, Normalize, fmnist_protocol
from benchmarks.sweep import Run, SweepPaths, resolve_sweep_args, sweep_main, sweep_parser
from benchmarks.training import (
    Schedule,
    checkpoint_path,
    create_model,
    predict,
    run_record,
    score,
    seed_everything,
    train,
    train_run,
)
from timm_sae.convert import convert_state_dict

PATHS = SweepPaths(
    results=REPO_ROOT / 'benchmarks' / 'results' / 'warm_start.json',
    checkpoint_dir=REPO_ROOT / 'runs' / 'warm_start',
    quick_results=REPO_ROOT / 'runs' / 'warm_start' / 'quick' / 'warm_start_quick.json',
    quick_checkpoint_dir=REPO_ROOT / 'runs' / 'warm_start' / 'quick',
)
SOURCES = ('resnet18', 'seresnet18')  # timm models, trained as the accuracy benchmark's configurations of that name
FINETUNE_LR = 0.01  # at batch BASE_BATCH: a tenth of the sources' peak learning rate
FINETUNE_DATA_SEED = 1000  # the fine-tuning of seed s shuffles and augments with seed 1000 + s


@dataclass(frozen=True)
class Arm:
    """One arm of the study: the model it trains and where it starts."""
    model: str
    source: Optional[str]  # None: from scratch
    convert: bool
    description: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


ARMS: Dict[str, Arm] = {
    'saeresnet18_scratch': Arm(
        'saeresnet18', None, False, "saeresnet18 from scratch for the sources' epochs + E, under the sources' "
                                    "protocol with its cosine over all of them (the compute-matched reference)"),
    'resnet18_continued': Arm('resnet18', 'resnet18', False, 'resnet18 source trained on for E epochs'),
    'resnet18_to_saeresnet18': Arm(
        'saeresnet18', 'resnet18', True, 'resnet18 source converted to saeresnet18 (residual gate x(1+s)), '
                                         'fine-tuned for E epochs'),
    'seresnet18_continued': Arm('seresnet18', 'seresnet18', False, 'seresnet18 source trained on for E epochs'),
    'seresnet18_to_saeresnet18_noresidual': Arm(
        'saeresnet18', 'seresnet18', True, 'seresnet18 source converted to saeresnet18 with sae_residual=False '
                                           '(plain gate x*s), fine-tuned for E epochs', {'sae_residual': False}),
}


def build_protocol(args: argparse.Namespace, data: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The study's protocol, stored with the results (part of every run's identity)."""
    sources = fmnist_protocol(args, data)
    return {
        'study': 'warm starts into saeresnet18 from trained resnet18 / seresnet18 sources, Fashion-MNIST',
        'quick': args.quick,
        'sources': sources,
        'source_configs': list(SOURCES),
        'finetune': {
            'epochs': args.finetune_epochs,
            'lr': FINETUNE_LR * sources['batch_size'] / BASE_BATCH,
            'lr_rule': f"{FINETUNE_LR} at batch {BASE_BATCH} (a tenth of the sources' peak), scaled linearly with "
                       f"the batch size",
            'warmup_epochs': 0,
            'schedule': 'per step: cosine from lr to 0 over the fine-tuning epochs, no warmup (timm CosineLRScheduler)',
            'optimizer': "fresh state: SGD, nesterov momentum 0.9, with the sources' weight decay, label smoothing, "
                         "augmentation, batch size and precision",
            'start': "the source run's validation-chosen checkpoint, loaded as it is (continued) or converted by "
                     "timm_sae.convert.convert_state_dict (converted)",
            'data_seed': f'the fine-tuning of seed s shuffles and augments with seed {FINETUNE_DATA_SEED} + s '
                         f'(its model is seeded with s)',
        },
        'scratch_epochs': args.epochs + args.finetune_epochs,
        'arms': {name: arm.description for name, arm in ARMS.items()},
        'selection': "every run reports the test top-1 and loss of its epoch with the best validation top-1 among "
                     "its training epochs 1..N (first on ties); epoch 0, a warm start's starting point, is "
                     "evaluated and recorded ('start') but is not a candidate, for every arm alike; the test set is "
                     "never used for a choice",
        'exactness_check': 'before fine-tuning, each converted model and its source are evaluated on the test '
                           'images in fp32 on the training device (no autocast, no TF32, cudnn deterministic): test '
                           'top-1 and loss of both, the largest absolute logit difference, and the number of images '
                           'whose predicted class differs',
    }


def finetune_schedule(protocol: Dict[str, Any]) -> Schedule:
    """The one schedule of every warm-started arm."""
    finetune = protocol['finetune']
    return Schedule(finetune['lr'], finetune['epochs'], finetune['warmup_epochs'])


def scratch_schedule(protocol: Dict[str, Any]) -> Schedule:
    """The sources' schedule stretched over the sources' epochs + E."""
    return Schedule(protocol['sources']['lr'], protocol['scratch_epochs'], protocol['sources']['warmup_epochs'])


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_source(checkpoint_dir: Path, source: str, seed: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The saved validation-chosen weights of a source run, and what identifies them."""
    path = checkpoint_path(checkpoint_dir, source, seed)
    raw = path.read_bytes()
    checkpoint = torch.load(io.BytesIO(raw), map_location='cpu', weights_only=True)
    info = {'config': source, 'seed': seed, 'checkpoint': str(path), 'sha256': hashlib.sha256(raw).hexdigest(),
            'epoch': checkpoint['epoch'], 'val_top1': checkpoint['metric']}
    return checkpoint['state_dict'], info


def conversion_check(
        source: torch.nn.Module, converted: torch.nn.Module, data: DeviceData, protocol: Dict[str, Any]
) -> Dict[str, Any]:
    """Epoch 0 of a conversion on the test images, in fp32: test top-1 and loss of the source and of the converted
    model, their largest absolute logit difference and the number of images whose predicted class differs."""
    device = data.test_x.device
    normalize = Normalize(protocol['mean'], protocol['std'], device, channels_last=False)
    fp32 = {'device_type': device.type, 'enabled': False}
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        source_logits, converted_logits = (
            predict(model.to(device), data.test_x, normalize, 512, fp32) for model in (source, converted))
    source_top1, source_loss = score(source_logits, data.test_y)
    converted_top1, converted_loss = score(converted_logits, data.test_y)
    return {
        'test_images': len(data.test_y),
        'source_test_top1': source_top1, 'source_test_loss': source_loss,
        'converted_test_top1': converted_top1, 'converted_test_loss': converted_loss,
        'max_abs_logit_diff': (source_logits - converted_logits).abs().max().item(),
        'max_abs_logit': source_logits.abs().max().item(),
        'predictions_differ': int((source_logits.argmax(1) != converted_logits.argmax(1)).sum()),
    }


def train_arm(name: str, seed: int, protocol: Dict[str, Any], data: DeviceData, checkpoint_dir: Path,
              position: int) -> Dict[str, Any]:
    """Train one arm with one seed; its results record."""
    arm = ARMS[name]
    seed_everything(seed)
    model = create_model(arm.model, **arm.kwargs)
    source_info = conversion = None
    if arm.source is None:
        schedule, data_seed = scratch_schedule(protocol), seed
    else:
        state, source_info = load_source(checkpoint_dir, arm.source, seed)
        if arm.convert:
            source = create_model(arm.source)
            source.load_state_dict(state)
            state = convert_state_dict(state, model)
            model.load_state_dict(state)
            conversion = conversion_check(source, model, data, protocol['sources'])
        else:
            model.load_state_dict(state)
        schedule, data_seed = finetune_schedule(protocol), FINETUNE_DATA_SEED + seed
    training = train(model, schedule, protocol['sources'], data, data_seed, f'{name} seed {seed}', position,
                              evaluate_start=arm.source is not None)
    record = run_record(name, arm.model, arm.kwargs, seed, model, training, protocol['sources'])
    record.update(role='arm', schedule=asdict(schedule), source=source_info, start=training.start,
                  conversion=conversion)
    return record


def train_study_run(run: Run, data: DeviceData, position: int, protocol: Dict[str, Any],
                    checkpoint_dir: Path) -> Dict[str, Any]:
    """The study's job: a source (trained as by the accuracy benchmark, its checkpoint saved) or an arm."""
    name, seed = run
    if name not in SOURCES:
        return train_arm(name, seed, protocol, data, checkpoint_dir, position)
    record = train_run(name, name, {}, seed, protocol['sources'], data, checkpoint_dir, position, save_checkpoint=True)
    record['role'] = 'source'
    record['schedule'] = asdict(Schedule.of(protocol['sources']))
    record['checkpoint']['sha256'] = file_sha256(Path(record['checkpoint']['path']))
    return record


def source_finished(run: Run, done: Set[Run]) -> bool:
    """Whether a run can start: an arm once its source run is finished."""
    name, seed = run
    source = ARMS[name].source if name in ARMS else None
    return source is None or (source, seed) in done


def check_source_checkpoints(results: Dict[str, Any], args: argparse.Namespace, requested: Sequence[Run]) -> None:
    """Refuse to resume when an arm still to train would start from a missing or different source checkpoint
    (in ``args.checkpoint_dir``)."""
    finished = {(r['config'], r['seed']): r for r in results['runs']}
    for name, seed in requested:
        arm = ARMS.get(name)
        if arm is None or arm.source is None or (name, seed) in finished or (arm.source, seed) not in finished:
            continue
        recorded = finished[(arm.source, seed)]['checkpoint']
        path = checkpoint_path(args.checkpoint_dir, arm.source, seed)
        if not path.is_file() or file_sha256(path) != recorded['sha256']:
            problem = 'differs from the one recorded' if path.is_file() else 'is missing'
            raise SystemExit(
                f'{path}, the checkpoint of the finished source run {arm.source} seed {seed} (recorded as '
                f'{recorded["path"]}, sha256 {recorded["sha256"][:12]}...), {problem}: {name} cannot start from it. '
                f'Restore the file (or pass --checkpoint-dir), or remove that source run and its arms from '
                f'{args.results} to train them again.')


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Command-line options, with the --quick defaults filled in."""
    parser = sweep_parser(
        __doc__.split('\n\n')[0], 'smoke run: 1 seed, 1 source epoch, 1 fine-tuning epoch, a small subset, batch 64',
        PATHS, epochs_help='epochs of the sources (default 15; 1 with --quick)')
    parser.add_argument('--finetune-epochs', type=int, default=None, metavar='E',
                        help='epochs of every warm-started arm; the scratch arm trains epochs + E '
                             '(default 5; 1 with --quick)')
    args = parser.parse_args(argv)
    if args.finetune_epochs is None:
        args.finetune_epochs = 1 if args.quick else 5
    return resolve_sweep_args(parser, args, PATHS, ('seeds', 'epochs', 'workers', 'finetune_epochs'))


def requested_runs(args: argparse.Namespace) -> List[Run]:
    """The runs of the study, seed-major and sources first: an interrupted study is balanced and every arm finds
    its source done."""
    return [(name, seed) for seed in range(args.seeds) for name in (*SOURCES, *ARMS)]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the study (skipping finished runs); the results document."""
    return sweep_main(__file__, argv, parse_args, build_protocol, requested_runs, train_study_run,
                      ready=source_finished, check=check_source_checkpoints)


if __name__ == '__main__':
    main()
