"""The training loop of the Fashion-MNIST benchmarks: one run of a configuration and seed, its record and checkpoint."""
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

import timm_sae  # noqa: F401  (registers the SaE models)
from benchmarks.environment import hardware
from benchmarks.fashion_mnist import CROP_PADDING, NUM_CLASSES, WARMUP_LR_INIT, DeviceData, Normalize, random_crop_flip
from timm_sae.measure import describe, param_count


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
        start = dict(zip(('val_top1', 'val_loss', 'test_top1', 'test_loss'), evaluate_splits(), strict=True))
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
        for key, value in zip(curve, (train_loss, val_top1, val_loss, test_top1, test_loss, epoch_time), strict=True):
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
        config: str, model_name: str, kwargs: Dict[str, Any], seed: int, protocol: Dict[str, Any], data: DeviceData,
        checkpoint_dir: Path, position: int = 0, save_checkpoint: bool = False) -> Dict[str, Any]:
    """Train the configuration ``config`` (``model_name`` with ``kwargs``) from scratch with one seed under
    ``protocol``; the run's results record (with ``save_checkpoint`` the validation-chosen weights are written to
    ``checkpoint_dir``)."""
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
