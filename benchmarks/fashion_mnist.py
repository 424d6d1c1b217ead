"""Fashion-MNIST straight from its IDX gz files, with numpy only.

The files come from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
IDX layout: a big-endian header ``0x00 0x00 <dtype> <ndim>`` followed by ``ndim`` big-endian uint32
dimensions, then the data. Images are ``0x00000803`` (uint8, 3 dims), labels ``0x00000801`` (uint8, 1 dim).
"""
import gzip
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

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

