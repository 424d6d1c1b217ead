"""Does SaE help? Train ResNet-18 variants on Fashion-MNIST under one fixed protocol and record the results.

    python benchmarks/accuracy.py                       # 9 configurations x 3 seeds x 15 epochs
    python benchmarks/accuracy.py --device cuda --workers 6
    python benchmarks/accuracy.py --quick --results /tmp/quick.json    # smoke run

Every run trains ``timm.create_model(model, in_chans=1, num_classes=10, **kwargs)`` from scratch. 5,000
training images, held out by a fixed split independent of the run seed, pick the checkpoint (best
validation top-1); the 10,000 test images are evaluated every epoch for the curve plot only, and the
reported test numbers are those of the validation-chosen epoch. The whole data pipeline lives on the
training device as tensors (no DataLoader); ``--workers N`` trains N runs at a time in separate
processes so that small models fill a GPU. The results JSON is rewritten atomically after every
finished run, and runs already in it (same configuration, seed and protocol) are skipped.
"""
import argparse
import concurrent.futures as futures
import functools
import json
import math
import multiprocessing
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

import timm_sae  # noqa: F401  (registers the SaE models)
from timm_sae.measure import cpu_model, describe, param_count, software_versions

from fashion_mnist import DEFAULT_DATA_DIR, IMAGE_SIZE, NUM_CLASSES, load_fashion_mnist, train_val_indices

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / 'benchmarks' / 'results' / 'accuracy.json'
DEFAULT_CHECKPOINT_DIR = REPO_ROOT / 'runs' / 'fmnist'
QUICK_RESULTS = REPO_ROOT / 'runs' / 'fmnist' / 'quick' / 'accuracy_quick.json'
QUICK_CHECKPOINT_DIR = REPO_ROOT / 'runs' / 'fmnist' / 'quick'

# name -> (timm model, create_model kwargs). Cardinality 4 is saeresnet18 itself.
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
}
QUICK_CONFIGS = ('resnet18', 'saeresnet18')
CHECKPOINT_RUNS = {('saeresnet18', 0)}  # (config, seed) whose val-chosen checkpoint is saved

VAL_SPLIT_SEED = 0
VAL_SIZE = 5000
QUICK_LIMITS = {'train': 1024, 'val': 256, 'test': 512}
PAD_TO = 32  # 28x28 images are zero-padded (black, like their background) to 32x32
CROP_PADDING = 4
BASE_LR, BASE_BATCH = 0.1, 256
WARMUP_LR_INIT = 1e-5


def build_protocol(args: argparse.Namespace, data: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The training/evaluation protocol of this invocation, stored with the results (part of a run's identity)."""
    train_idx, val_idx, test_count = split_indices(data, args.quick)
    train_pixels = data['train_images'][train_idx].astype(np.float64) / 255.
    batch = 64 if args.quick else 256
    return {
        'dataset': 'Fashion-MNIST, IDX gz files of the Debian package dataset-fashion-mnist',
        'quick': args.quick,
        'train_images': int(len(train_idx)),
        'val_images': int(len(val_idx)),
        'test_images': int(test_count),
        'val_split': f'{len(val_idx)} of the training images, numpy default_rng({VAL_SPLIT_SEED}) permutation, '
                     f'the same for every run and seed',
        'input_size': [1, PAD_TO, PAD_TO],
        'preprocessing': f'28x28 image zero-padded to {PAD_TO}x{PAD_TO} (2 px each side), scaled to [0, 1], '
                         f'normalised with mean/std of the training split (28x28 pixels)',
        'mean': [round(float(train_pixels.mean()), 6)],
        'std': [round(float(train_pixels.std()), 6)],
        'augmentation': f'random {PAD_TO}x{PAD_TO} crop of the image zero-padded by {CROP_PADDING} px, horizontal '
                        f'flip p=0.5; batched on the training device',
        'optimizer': 'SGD, nesterov momentum 0.9 (timm create_optimizer_v2 opt=sgd), no weight decay on norm/bias',
        'lr': BASE_LR * batch / BASE_BATCH,
        'lr_rule': f'{BASE_LR} at batch {BASE_BATCH}, scaled linearly with the batch size',
        'weight_decay': 5e-4,
        'schedule': f'per step: linear warmup from {WARMUP_LR_INIT} over the warmup epochs, then cosine to 0 '
                    f'(timm CosineLRScheduler, warmup_prefix)',
        'warmup_epochs': min(1, args.epochs - 1),
        'epochs': args.epochs,
        'batch_size': batch,
        'drop_last': True,
        'label_smoothing': 0.1,
        'eval_loss': 'plain cross-entropy (no label smoothing), mean over images',
        'selection': 'the checkpoint is the epoch with the best validation top-1 (first one on ties); test top-1 '
                     'and loss are evaluated every epoch for the curve plot only, never for selection; the '
                     'reported test numbers are those of the validation-chosen epoch',
        'precision': 'cuda: bf16 autocast, channels_last, cudnn.benchmark; cpu: fp32',
        'seeding': 'seed s seeds torch, numpy and random, the model init, the shuffling and the augmentation; '
                   'cudnn.benchmark makes GPU runs not bit-reproducible',
    }


def split_indices(data: Dict[str, np.ndarray], quick: bool) -> Tuple[np.ndarray, np.ndarray, int]:
    """Training and validation indices into the training images, and the number of test images used."""
    num_train, num_test = len(data['train_labels']), len(data['test_labels'])
    if quick:
        val_size = min(QUICK_LIMITS['val'], num_train // 5)
        train_idx, val_idx = train_val_indices(num_train, val_size, VAL_SPLIT_SEED)
        return train_idx[:QUICK_LIMITS['train']], val_idx, min(num_test, QUICK_LIMITS['test'])
    if num_train <= VAL_SIZE:
        raise ValueError(f'the training set has {num_train} images; the protocol holds out {VAL_SIZE} (use --quick)')
    train_idx, val_idx = train_val_indices(num_train, VAL_SIZE, VAL_SPLIT_SEED)
    return train_idx, val_idx, num_test


@dataclass
class DeviceData:
    """Padded uint8 images (N, 1, 32, 32) and int64 labels of the three splits, on the training device."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def to_device_data(data: Dict[str, np.ndarray], quick: bool, device: torch.device) -> DeviceData:
    """Split, pad and move the data set to ``device`` once."""
    train_idx, val_idx, test_count = split_indices(data, quick)
    pad = (PAD_TO - IMAGE_SIZE) // 2

    def images(array: np.ndarray) -> torch.Tensor:
        x = torch.tensor(array).unsqueeze(1)  # a copy: IDX arrays are read-only views
        return F.pad(x, (pad, pad, pad, pad)).to(device)

    def labels(array: np.ndarray) -> torch.Tensor:
        return torch.tensor(array).to(device)

    return DeviceData(
        images(data['train_images'][train_idx]), labels(data['train_labels'][train_idx]),
        images(data['train_images'][val_idx]), labels(data['train_labels'][val_idx]),
        images(data['test_images'][:test_count]), labels(data['test_labels'][:test_count]),
    )


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Batched augmentation: a random HxW crop of each zero-padded image, flipped horizontally with p=0.5."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offset_y = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    offset_x = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand((n, 1), generator=generator, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device)
    rows = offset_y + torch.arange(h, device=x.device)  # (n, h)
    cols = offset_x + torch.where(flip, w - 1 - cols, cols)  # (n, w), reversed where flipped
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their broadcast shape (n, h, w) first: (n, h, w, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Normalize:
    """uint8 batch -> float32 normalised with the protocol's mean/std (channels_last when asked)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool):
        self.scale = (1. / (255. * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.shift).contiguous(memory_format=self.memory_format)


def predict(
        model: torch.nn.Module, x: torch.Tensor, normalize: Normalize, batch_size: int,
        autocast: Dict[str, Any]) -> torch.Tensor:
    """fp32 logits (N, classes) of ``model`` in eval mode on the uint8 images ``x``."""
    model.eval()
    with torch.inference_mode(), torch.autocast(**autocast):
        return torch.cat([model(normalize(x[i:i + batch_size])).float() for i in range(0, len(x), batch_size)])


def score(logits: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
    """Top-1 (%) and mean cross-entropy of ``logits`` against the labels ``y``."""
    top1 = 100. * (logits.argmax(1) == y).sum().item() / len(y)
    return top1, F.cross_entropy(logits, y, reduction='sum').item() / len(y)


def evaluate(
        model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalize, batch_size: int,
        autocast: Dict[str, Any]) -> Tuple[float, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` on (x, y)."""
    return score(predict(model, x, normalize, batch_size, autocast), y)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and random."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Schedule:
    """Learning rate of one training, per step: linear warmup from ``WARMUP_LR_INIT`` to ``lr`` over
    ``warmup_epochs``, then cosine to 0 over the remaining epochs (timm CosineLRScheduler, warmup_prefix)."""
    lr: float
    epochs: int
    warmup_epochs: int = 0

    @classmethod
    def of(cls, protocol: Dict[str, Any]) -> 'Schedule':
        """The schedule a protocol document fixes."""
        return cls(protocol['lr'], protocol['epochs'], protocol['warmup_epochs'])


@dataclass
class Training:
    """What ``train`` measured: the validation-chosen epoch, per-epoch curves and timings."""
    best: Dict[str, Any]  # epoch (1-based), val_top1, val_loss, test_top1, test_loss
    curve: Dict[str, List[float]]  # one value per epoch 1..epochs
    start: Optional[Dict[str, float]]  # epoch 0, before any step (with evaluate_start)
    best_state: Optional[Dict[str, torch.Tensor]]  # CPU copy of the chosen weights (with keep_best_state)
    train_time_s: float
    wall_time_s: float
    train_images_per_s: float


def train(
        model: torch.nn.Module, schedule: Schedule, protocol: Dict[str, Any], data: DeviceData, seed: int,
        desc: str, position: int = 0, keep_best_state: bool = False, evaluate_start: bool = False) -> Training:
    """Train ``model`` from the weights it holds under ``protocol`` (batch, augmentation, optimizer, weight decay,
    label smoothing, precision) with ``schedule`` and a fresh optimizer; ``seed`` seeds the shuffling and the
    augmentation. Validation and test are evaluated after every epoch; the validation-chosen epoch (best top-1,
    first on ties, among epochs 1..N) is reported. With ``evaluate_start`` epoch 0 is evaluated too, and recorded
    but never chosen."""
    device = data.train_x.device
    cuda = device.type == 'cuda'
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(protocol['mean'], protocol['std'], device, channels_last=cuda)
    autocast = {'device_type': device.type, 'dtype': torch.bfloat16, 'enabled': cuda}
    generator = torch.Generator(device=device).manual_seed(seed)

    batch, epochs = protocol['batch_size'], schedule.epochs
    steps = len(data.train_x) // batch
    if steps == 0:
        raise ValueError(f'{len(data.train_x)} training images are fewer than one batch of {batch}')
    warmup = schedule.warmup_epochs * steps
    optimizer = create_optimizer_v2(
        model, opt='sgd', lr=schedule.lr, weight_decay=protocol['weight_decay'], momentum=0.9)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=epochs * steps - warmup, lr_min=0., warmup_t=warmup, warmup_lr_init=WARMUP_LR_INIT,
        warmup_prefix=True, t_in_epochs=False)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=protocol['label_smoothing'])
    eval_batch = 2048 if cuda else 512

    def evaluate_splits() -> Tuple[float, float, float, float]:
        return (*evaluate(model, data.val_x, data.val_y, normalize, eval_batch, autocast),
                *evaluate(model, data.test_x, data.test_y, normalize, eval_batch, autocast))

    start = None
    if evaluate_start:
        start = dict(zip(('val_top1', 'val_loss', 'test_top1', 'test_loss'), evaluate_splits()))
    curve: Dict[str, List[float]] = {
        'train_loss': [], 'val_top1': [], 'val_loss': [], 'test_top1': [], 'test_loss': [], 'train_time_s': []}
    best = {'epoch': 0, 'val_top1': -1.}
    best_state: Optional[Dict[str, torch.Tensor]] = None
    train_time = 0.
    started = time.perf_counter()
    bar = tqdm(total=epochs * steps, desc=desc, unit='step', position=position, leave=False, dynamic_ncols=True,
               mininterval=1.)
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(data.train_x), generator=generator, device=device)
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            x = normalize(random_crop_flip(data.train_x[idx], CROP_PADDING, generator))
            with torch.autocast(**autocast):
                loss = criterion(model(x), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update((epoch - 1) * steps + step + 1)
            loss_sum += loss.detach()
            bar.update()
        train_loss = loss_sum.item() / steps  # .item() synchronises the device before the clock is read
        epoch_time = time.perf_counter() - epoch_start
        train_time += epoch_time
        if not math.isfinite(train_loss):
            bar.close()
            raise RuntimeError(f'{desc}: training loss is {train_loss} in epoch {epoch}')
        val_top1, val_loss, test_top1, test_loss = evaluate_splits()
        for key, value in zip(curve, (train_loss, val_top1, val_loss, test_top1, test_loss, epoch_time)):
            curve[key].append(round(value, 5))
        if val_top1 > best['val_top1']:
            best = {'epoch': epoch, 'val_top1': val_top1, 'val_loss': val_loss,
                    'test_top1': test_top1, 'test_loss': test_loss}
            if keep_best_state:
                best_state = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in model.state_dict().items()}
        bar.set_postfix_str(f'ep {epoch} loss {train_loss:.3f} val {val_top1:.2f} test {test_top1:.2f}')
    bar.close()
    return Training(best, curve, start, best_state, train_time, time.perf_counter() - started,
                    epochs * steps * batch / train_time)


def run_record(
        config: str, model_name: str, kwargs: Dict[str, Any], seed: int, model: torch.nn.Module,
        training: Training, protocol: Dict[str, Any]) -> Dict[str, Any]:
    """The results record of one trained run (the JSON's ``runs`` entries)."""
    device = next(model.parameters()).device
    best = training.best
    return {
        'config': config, 'model': model_name, 'model_kwargs': kwargs, 'seed': seed,
        'test_top1': best['test_top1'], 'test_loss': best['test_loss'],
        'best_val_top1': best['val_top1'], 'best_val_loss': best['val_loss'], 'best_epoch': best['epoch'],
        'final_test_top1': training.curve['test_top1'][-1],
        'params': param_count(model),
        'gmacs': describe(
            model_name, tuple(protocol['input_size']), in_chans=1, num_classes=NUM_CLASSES, **kwargs)['gmacs'],
        'train_time_s': round(training.train_time_s, 2), 'wall_time_s': round(training.wall_time_s, 2),
        'train_images_per_s': round(training.train_images_per_s, 1),
        'device': str(device), 'hardware': hardware(device), 'curve': training.curve,
    }


def create_model(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """A model of this benchmark: 1 input channel, Fashion-MNIST's classes."""
    return timm.create_model(model_name, in_chans=1, num_classes=NUM_CLASSES, **kwargs)


def train_run(
        config: str, seed: int, protocol: Dict[str, Any], data: DeviceData, checkpoint_dir: Path,
        position: int = 0, save_checkpoint: bool = False) -> Dict[str, Any]:
    """Train one configuration from scratch with one seed under ``protocol``; the run's results record
    (with ``save_checkpoint`` the validation-chosen weights are written to ``checkpoint_dir``)."""
    model_name, kwargs = CONFIGS[config]
    seed_everything(seed)
    model = create_model(model_name, **kwargs)
    training = train(model, Schedule.of(protocol), protocol, data, seed, f'{config} seed {seed}', position,
                     keep_best_state=save_checkpoint)
    record = run_record(config, model_name, kwargs, seed, model, training, protocol)
    if save_checkpoint:
        record['checkpoint'] = write_checkpoint(checkpoint_dir, config, seed, model_name, kwargs, training.best_state,
                                                training.best, protocol)
    return record


def checkpoint_path(checkpoint_dir: Path, config: str, seed: int) -> Path:
    """Where ``write_checkpoint`` puts the checkpoint of a run."""
    return checkpoint_dir / f'{config}_seed{seed}.pth.tar'


def write_checkpoint(
        checkpoint_dir: Path, config: str, seed: int, model_name: str, kwargs: Dict[str, Any],
        state_dict: Dict[str, torch.Tensor], best: Dict[str, Any], protocol: Dict[str, Any]) -> Dict[str, Any]:
    """Save the val-chosen weights as a timm train.py-style checkpoint; what the model card needs to know."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(checkpoint_dir, config, seed)
    torch.save({
        'arch': model_name,
        'state_dict': state_dict,
        'args': {'model': model_name, 'num_classes': NUM_CLASSES, 'in_chans': 1, 'model_kwargs': kwargs,
                 # preprocessing in train.py's argument names, for the export's pretrained_cfg
                 'input_size': protocol['input_size'], 'mean': protocol['mean'], 'std': protocol['std'],
                 'crop_pct': 1.0},
        'epoch': best['epoch'],
        'metric': best['val_top1'],
    }, path)
    return {
        'path': str(path), 'epoch': best['epoch'], 'metric': 'val_top1', 'value': best['val_top1'],
        'input_size': protocol['input_size'], 'mean': protocol['mean'], 'std': protocol['std'],
        'preprocessing': protocol['preprocessing'], 'num_classes': NUM_CLASSES,
    }


def hardware(device: torch.device) -> str:
    """Human-readable description of the machine a run used."""
    text = f'{cpu_model()}, {os.cpu_count()} logical CPUs'
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        text = (f'{props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}, '
                f'cuDNN {torch.backends.cudnn.version()}; {text}')
    return text


def versions() -> Dict[str, str]:
    """Versions of the software the results depend on."""
    return {**software_versions(), 'numpy': np.__version__}


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


def train_config(run: Run, data: DeviceData, position: int, protocol: Dict[str, Any],
                 checkpoint_dir: Path) -> Dict[str, Any]:
    """This benchmark's job: one configuration and seed, its checkpoint saved if it is in ``CHECKPOINT_RUNS``."""
    config, seed = run
    return train_run(config, seed, protocol, data, checkpoint_dir, position, save_checkpoint=run in CHECKPOINT_RUNS)


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


PATHS = SweepPaths(DEFAULT_RESULTS, DEFAULT_CHECKPOINT_DIR, QUICK_RESULTS, QUICK_CHECKPOINT_DIR)


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


def run_sweep(
        script: str, argv: Sequence[str], args: argparse.Namespace, data: Dict[str, np.ndarray],
        results: Dict[str, Any], requested: Sequence[Run], run_job: RunJob, started: float,
        ready: Callable[[Run, Set[Run]], bool] = lambda run, done: True) -> Dict[str, Any]:
    """Train the runs of ``requested`` that ``results`` lacks, in order, each once ``ready(run, finished runs)``,
    with ``args.workers`` processes; ``results`` is rewritten to ``args.results`` after every finished run.
    ``started`` is the ``time.perf_counter()`` at which the invocation began. The results document."""
    device = torch.device(args.device)
    invocation = {
        'command': shlex.join(['python', script, *argv]),
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


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the requested sweep (skipping finished runs); the results document."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_fashion_mnist(args.data_dir)
    protocol = as_json(build_protocol(args, data))
    results = load_results(args.results, protocol)
    requested = [(c, s) for s in range(args.seeds) for c in args.configs]  # seed-major: partial sweeps stay balanced
    job = functools.partial(train_config, protocol=protocol, checkpoint_dir=args.checkpoint_dir)
    return run_sweep('benchmarks/accuracy.py', argv, args, data, results, requested, job, started)


if __name__ == '__main__':
    main()
