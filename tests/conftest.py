"""Helpers shared by the test modules."""
import os
from typing import Any, Callable, Container, Dict, Iterable, Iterator, List

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import timm_sae.blocks


# max |converted logits - source logits| / max |source logits| of an exact conversion. Exact in real arithmetic;
# in fp32 the BatchNorm divided by the gate g (plain sources), the multiply by g and the wider SaE matrices (SE
# sources) round in their own way, and the networks carry those last-bit differences forward: measured 2e-7 to
# 4e-7 (resnet18, resnet26d, resnet50, seresnext26d_32x4d), 1e-5 leaves room for the deepest models.
EXACT_RTOL = 1e-5
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


@pytest.fixture(scope='module')
def single_thread() -> Iterator[None]:
    """One intra-op thread: small inputs gain nothing from more, and on a busy 2-core machine OpenMP's barrier
    waits for a descheduled partner thread made small-op tests 10-50x slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---------------------------------------------------------------------------------------------------
# the exact training tail against timm's own (test_tail.py, test_accelerate.py)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return float((actual - expected).detach().abs().max() / expected.detach().abs().max().clamp_min(1e-300))


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
    for step, (got, want) in enumerate(zip(actual, expected)):
        assert got.keys() == want.keys()
        for name in want:
            assert want[name] is not None, name
            if want[name].dtype == torch.int64:
                assert torch.equal(got[name], want[name]), (step, name)
            else:
                assert rel_error(got[name], want[name]) < F64_REL, (step, name, rel_error(got[name], want[name]))


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
