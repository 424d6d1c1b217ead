"""Helpers shared by the test modules."""
import os
from typing import Any, Callable, Container, Iterable, Iterator, List

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


# max |converted logits - source logits| / max |source logits| of an exact conversion. Exact in real arithmetic;
# in fp32 the BatchNorm divided by the gate g (plain sources), the multiply by g and the wider SaE matrices (SE
# sources) round in their own way, and the networks carry those last-bit differences forward: measured 2e-7 to
# 4e-7 (resnet18, resnet26d, resnet50, seresnext26d_32x4d), 1e-5 leaves room for the deepest models.
EXACT_RTOL = 1e-5


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
    """One intra-op thread: small inputs gain nothing from more, and on a busy 2-core machine OpenMP's barrier
    waits for a descheduled partner thread made small-op tests 10-50x slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
