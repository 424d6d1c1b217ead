"""What the test modules share: the fast suite's models, pytest fixtures and helpers (the pieces the package's
demo uses too, the exactness tolerance and the Hub cache layout, are in ``timm_sae._testing``)."""
import gzip
import os
from pathlib import Path
from typing import Any, Callable, Container, Dict, Iterable, Iterator, List

import numpy as np
import pytest
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import timm_sae.blocks
from timm_sae._testing import relative_error

# the models of the fast suite where a check runs on the whole family: a basic block; deep stem, avg-pool
# downsampling and bottleneck; grouped convs and tiered stem, from SE weights (the others run with -m slow)
FAST = ('saeresnet18', 'saeresnet26d', 'saeresnext26t_32x4d')
# float64 checks of two forms of the same function: they differ by rounding alone (about 1e-13), so this cannot
# hide a wrong formula
F64_REL = 1e-9


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


def random_float64_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded random parameters, BatchNorm statistics and affine maps, in float64.

    The last norm of each block (the one timm zero-initialises) gets weights in [0.1, 0.3], as in
    ``conftest.randomise_batchnorm``: with weights near 1 the residual stream of a deep model grows until its
    gates saturate, and rounding alone then moves their gradients by more than the tolerance.
    """
    generator = torch.Generator().manual_seed(seed)
    module = module.to(torch.float64)  # on the meta device this allocates nothing
    last_norms = {f'{name}.{"bn3" if hasattr(block, "bn3") else "bn2"}.weight'.lstrip('.')
                  for name, block in module.named_modules() if isinstance(block, (BasicBlock, Bottleneck))}
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith('running_var'):
                tensor.uniform_(0.5, 2., generator=generator)
            elif name.endswith('num_batches_tracked'):
                tensor.zero_()
            elif tensor.dim() > 1:
                tensor.normal_(0., (2. / tensor[0].numel()) ** 0.5, generator=generator)
            elif name in last_norms:
                tensor.uniform_(0.1, 0.3, generator=generator)
            else:
                tensor.uniform_(-0.5, 0.5, generator=generator)
                if name.endswith('weight'):
                    tensor.add_(1.)
    return module


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


# ---------------------------------------------------------------------------------------------------
# the exact training tail against timm's own (test_tail.py, test_accelerate.py)


def train_steps(block: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 0.1) -> List[Dict[str, torch.Tensor]]:
    """Per step: the output, the input's and every parameter's gradient; then an SGD step. Last: the buffers."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(block.parameters(), lr=lr)
    records = []
    for step in range(steps):
        x_step = (x + step).requires_grad_()
        out = block(x_step)
        weights = torch.linspace(-1., 1., out.numel(), dtype=out.dtype).view_as(out)
        optimizer.zero_grad(set_to_none=True)
        (out * weights).sum().backward()
        records.append({'output': out.detach(), 'input grad': x_step.grad,
                        **{f'{name} grad': p.grad for name, p in block.named_parameters()}})
        optimizer.step()
    records.append({name: b.clone() for name, b in block.named_buffers()})
    return records


def assert_equal_records(actual: List[Dict[str, torch.Tensor]], expected: List[Dict[str, torch.Tensor]]) -> None:
    """Equal within ``F64_REL`` of each tensor's largest magnitude (integers: equal)."""
    assert len(actual) == len(expected)
    for step, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.keys() == want.keys()
        for name in want:
            assert want[name] is not None, name
            if want[name].dtype == torch.int64:
                assert torch.equal(got[name], want[name]), (step, name)
            else:
                error = relative_error(got[name], want[name])
                assert error < F64_REL, (step, name, error)


@pytest.fixture
def tail_calls(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Records each call of the exact training tail (a check that never ran it proves nothing)."""
    calls: List[int] = []
    original = timm_sae.blocks.gated_tail

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(timm_sae.blocks, 'gated_tail', counting)
    return calls
