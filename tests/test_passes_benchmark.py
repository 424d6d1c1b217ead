"""benchmarks/passes.py: the machine-independent costs of the block tail, and the doc section it writes.

Counts do not depend on the machine, so the targets of the exact tail are checked here exactly: per Bottleneck,
training (forward + backward) within resnet50's passes + 4 reads / + 2 writes, eval no more than resnet50's;
the activation memory a training forward keeps within 1% of the plain twin's (slow: whole models).
"""
import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

from benchmarks.common import RESULTS_DIR, doc_section
from benchmarks.kept_memory import kept_activation_bytes
from benchmarks.passes import count_block, kept_mib, markdown

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('block', ['layer3.1', pytest.param('layer2.0', marks=pytest.mark.slow)])
@pytest.mark.parametrize('model', ['saeresnet50', 'seresnet50 (accelerated)'])
def test_passes_within_resnet50s_budget(model: str, block: str):
    plain = {mode: count_block('resnet50', block, mode == 'train') for mode in ('eval', 'train')}
    fast = {mode: count_block(model, block, mode == 'train') for mode in ('eval', 'train')}
    assert fast['train']['reads'] <= plain['train']['reads'] + 4, fast['train']['ops']
    assert fast['train']['writes'] <= plain['train']['writes'] + 2, fast['train']['ops']
    assert fast['eval']['reads'] <= plain['eval']['reads'] and fast['eval']['writes'] <= plain['eval']['writes']


@pytest.mark.slow
@pytest.mark.parametrize('model, plain', [
    ('saeresnet50', 'resnet50'), ('saeresnext50_32x4d', 'resnext50_32x4d'),
    ('seresnet50 (accelerated)', 'resnet50'), ('ecaresnet50d (accelerated)', 'resnet50d')])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_kept_memory_within_one_percent_of_the_plain_twin(model: str, plain: str, channels_last: bool):
    assert kept_mib(model, channels_last) <= 1.01 * kept_mib(plain, channels_last)


def test_kept_memory_ignores_the_wrappers_a_compiler_leaves_alive():
    """Fake and functional tensors (left alive by torch.compile) own no memory and must not break the count."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    expected = kept_activation_bytes(model, x)
    with FakeTensorMode():
        fake = torch.empty(3)
    with FunctionalTensorMode():
        functional = FunctionalTensor.to_functional(fake)
    # the input (saved by the convolution) and the ReLU's output (saved by its backward), float32
    assert kept_activation_bytes(model, x) == expected == 4 * (3 * 8 * 8 + 4 * 6 * 6)
    del functional


def test_kept_memory_frees_the_model():
    """Counting must not keep the model and its graph alive (a benchmark counts many models in one process)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())  # ReLU saves its own output
    kept_activation_bytes(model, torch.randn(1, 3, 8, 8))
    weight = weakref.ref(model[0].weight)
    del model
    gc.collect()
    assert weight() is None


def test_doc_passes_section_is_generated_from_its_json():
    report = json.loads((RESULTS_DIR / 'passes.json').read_text())
    assert doc_section(REPO / 'docs' / 'speed.md', 'passes').strip() == markdown(report).strip()
    assert (RESULTS_DIR / 'passes.md').read_text() == markdown(report)
