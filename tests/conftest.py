"""What the test modules share: the fast suite's models, pytest fixtures and helpers (the pieces the package's
demo uses too, the exactness tolerance and the Hub cache layout, are in ``timm_sae._testing``)."""
import gzip
import os
from pathlib import Path
from typing import Any, Callable, Container, Dict, Iterable, Iterator, List

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# the models of the fast suite where a check runs on the whole family: a basic block; deep stem, avg-pool
# downsampling and bottleneck; grouped convs and tiered stem, from SE weights (the others run with -m slow)
FAST = ('saeresnet18', 'saeresnet26d', 'saeresnext26t_32x4d')


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, torch's intra-op threads are the worker's share of the cores: one thread per
    core in every worker would oversubscribe them (see ``single_thread``)."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def fast_or_slow(values: Iterable[Any], fast: Container[str], key: Callable[[Any], str] = str) -> List[Any]:
    """pytest params of ``values`` (a tuple's items are one case's arguments), marked slow where ``key(value)``
    is not in ``fast``: a check of every model keeps a few representatives in the fast suite."""
    return [pytest.param(*(value if isinstance(value, tuple) else (value,)),
                         marks=() if key(value) in fast else pytest.mark.slow) for value in values]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with seeded random BatchNorm weights, biases and running statistics.

    timm initialises BatchNorm to the identity and zeroes each block's last norm weight, which makes every
    SE / SaE input 0: checks of equal outputs would then not see the attention layers. The norms timm
    zero-initialises get weights in [0.1, 0.3] rather than [0.5, 1.5], so that the residual stream of a
    100-block network stays well conditioned, as a trained one is, instead of growing so fast that fp32
    rounding rather than the code under test decides the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                low, high = (0.1, 0.3) if not module.weight.any() else (0.5, 1.5)
                module.weight.uniform_(low, high, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2., generator=generator)
    return model.eval()


@pytest.fixture(scope='module')
def single_thread() -> Iterator[None]:
    """One intra-op thread: small inputs gain nothing from more, and on a busy machine OpenMP's barrier waits
    for a descheduled partner thread, which slows small-op tests many times over."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype='>u4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + array.tobytes())


def make_dataset(root: Path, num_train: int = 200, num_test: int = 50) -> Dict[str, np.ndarray]:
    """Tiny synthetic Fashion-MNIST: the label is encoded as the image's brightness, so it is learnable."""
    from benchmarks import fashion_mnist

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (('train', num_train), ('test', num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20).astype(np.uint8)
        arrays[f'{split}_images'], arrays[f'{split}_labels'] = images, labels
    root.mkdir(parents=True, exist_ok=True)
    for key, name in fashion_mnist.FILES.items():
        write_idx(root / name, arrays[key])
    return arrays


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny synthetic Fashion-MNIST IDX files (``make_dataset``)."""
    root = tmp_path_factory.mktemp('fmnist')
    make_dataset(root)
    return root
