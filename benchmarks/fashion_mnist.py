"""Fashion-MNIST: the data straight from its IDX gz files, and the protocol the benchmarks train and evaluate with.

The files come from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
IDX layout: a big-endian header ``0x00 0x00 <dtype> <ndim>`` followed by ``ndim`` big-endian uint32
dimensions, then the data. Images are ``0x00000803`` (uint8, 3 dims), labels ``0x00000801`` (uint8, 1 dim).
"""
import argparse
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = Path('/usr/share/datasets/fashion-mnist')
FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
IMAGE_SIZE = 28
NUM_CLASSES = 10
CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
INSTALL_HINT = 'install it with `apt-get update && apt-get install -y dataset-fashion-mnist`'

# the training and evaluation protocol
VAL_SPLIT_SEED = 0
VAL_SIZE = 5000
QUICK_LIMITS = {'train': 1024, 'val': 256, 'test': 512}
PAD_TO = 32  # 28x28 images are zero-padded (black, like their background) to 32x32
CROP_PADDING = 4
BASE_LR, BASE_BATCH = 0.1, 256
WARMUP_LR_INIT = 1e-5


class CorruptDataError(ValueError):
    """An IDX file whose header or size does not match what Fashion-MNIST needs."""


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Array stored in a gzipped IDX file, checked against the expected magic number and its own header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Fashion-MNIST file {path} is missing; {INSTALL_HINT}, or pass --data-dir')
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CorruptDataError(f'{path} is not a readable gzip file ({e}); reinstall dataset-fashion-mnist') from e
    if len(raw) < 4:
        raise CorruptDataError(f'{path} is too short for an IDX header ({len(raw)} bytes)')
    found = int.from_bytes(raw[:4], 'big')
    if found != magic:
        raise CorruptDataError(f'{path} has IDX magic number 0x{found:08x}, expected 0x{magic:08x}')
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f'{path} is too short for its {ndim}-dimensional IDX header')
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise CorruptDataError(
            f'{path} holds {len(raw)} bytes but its header {shape} needs {expected}; the file is truncated or corrupt')
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(data_dir: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ('train' or 't10k' files, named 'train'/'test')."""
    data_dir = Path(data_dir)
    images = read_idx(data_dir / FILES[f'{split}_images'], IMAGE_MAGIC)
    labels = read_idx(data_dir / FILES[f'{split}_labels'], LABEL_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CorruptDataError(f'{split} images have shape {images.shape}, expected (N, {IMAGE_SIZE}, {IMAGE_SIZE})')
    if images.shape[0] != labels.shape[0]:
        raise CorruptDataError(f'{split} has {images.shape[0]} images but {labels.shape[0]} labels')
    if labels.size and labels.max() >= NUM_CLASSES:
        raise CorruptDataError(f'{split} labels reach {labels.max()}, expected 0..{NUM_CLASSES - 1}')
    return images, labels.astype(np.int64)


def load_fashion_mnist(data_dir: Path = DEFAULT_DATA_DIR) -> Dict[str, np.ndarray]:
    """All four arrays: train_images, train_labels, test_images, test_labels."""
    train_images, train_labels = load_split(data_dir, 'train')
    test_images, test_labels = load_split(data_dir, 'test')
    return {
        'train_images': train_images, 'train_labels': train_labels,
        'test_images': test_images, 'test_labels': test_labels,
    }


def train_val_indices(num_train: int, val_size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split of the training set; ``seed`` is the split's own, not a run's."""
    if not 0 < val_size < num_train:
        raise ValueError(f'validation size {val_size} must be between 1 and {num_train - 1}')
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def fmnist_protocol(args: argparse.Namespace, data: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The Fashion-MNIST training/evaluation protocol of an invocation (``--quick``, ``--epochs``), stored with the
    results (part of a run's identity)."""
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
