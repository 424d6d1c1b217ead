"""Deployment routes: torch.export (dynamic batch), TorchScript and ONNX (dynamo exporter, onnxruntime).

Models: saeresnet18 (basic blocks, 7x7 stem), saeresnext26t_32x4d (bottlenecks with grouped convs, tiered
deep stem) and ``fuse_batchnorm`` of the latter (every BatchNorm folded into its conv). Each has 10 classes,
seeded weights and randomised BatchNorm affine parameters and running statistics: timm zero-initialises
each block's last BatchNorm weight, which would make every SaE input zero. ``test_outputs_depend_on_sae``
checks that the SaE excitation moves the logits by far more than any tolerance below, so a route that
dropped or mangled the gate would fail.

The fast suite runs TorchScript on all three (and the sae_stages tests one torch.export); an export costs
many times a TorchScript compile, so torch.export and ONNX of every model and timm's ONNX helper are marked slow.

The reference is the eager model under ``torch.no_grad``, i.e. the SaE layer gating in place and the
Bottleneck squeezing its narrow conv3 input (``timm_sae.blocks``); torch.export and the ONNX exporter
built on it trace the out-of-place ``x * scale``, TorchScript compiles both and squeezes the full-width
map (the SE form, exact too). Exports use a batch-2 example
(torch.export specialises size-1 dimensions) and run at batch 1 and 3.

Tolerances: torch.export and TorchScript run the same ATen kernels as eager, so they are held to
``assert_close``'s fp32 defaults (rtol 1.3e-6, atol 1e-5). onnxruntime computes the same fp32 graph with
its own kernels (MLAS convolutions) after its own graph rewrites (such as fusing BatchNorm and activations
into the convolutions), so results are rounded in another order, and the differences add up over some 20
layers. It is held to 1e-5 of the largest logit magnitude, well above those differences (docs/method.md has
what was measured) and over 100 times less than what zeroing the SaE excitation weights changes
(``test_outputs_depend_on_sae``).
"""
import copy
import io
from pathlib import Path

import onnx
import onnxruntime
import pytest
import timm
import torch
from timm.utils.onnx import onnx_export
from torch import nn
from torch.testing import assert_close

from conftest import randomise_batchnorm
from timm_sae import SqueezeAggregatedExcitation, fuse_batchnorm

pytestmark = pytest.mark.usefixtures('single_thread')

SIZE = 64  # input height and width: every stage keeps at least a 2x2 map
NUM_CLASSES = 10
EXAMPLE_BATCH = 2  # the batch size exports are traced with
RUN_BATCHES = (1, 3)  # the batch sizes the exported models are run at
ORT_RELATIVE_TOLERANCE = 1e-5  # of the largest logit magnitude, see the module docstring
FOLDED = 'saeresnext26t_32x4d-bn-folded'


def _model_with_random_bn(name: str) -> nn.Module:
    """An eval model with seeded weights whose BatchNorms have non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    return randomise_batchnorm(timm.create_model(name, num_classes=NUM_CLASSES))


@pytest.fixture(scope='module', params=['saeresnet18', 'saeresnext26t_32x4d', FOLDED])
def model(request: pytest.FixtureRequest) -> nn.Module:
    if request.param == FOLDED:
        return fuse_batchnorm(_model_with_random_bn('saeresnext26t_32x4d'), strict=True)
    return _model_with_random_bn(request.param)


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))


def _eager(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The reference: eager inference, the SaE layer gating in place."""
    with torch.no_grad():
        return model(images)


def _assert_close_to_ort_tolerance(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert_close(actual, expected, rtol=0, atol=ORT_RELATIVE_TOLERANCE * expected.abs().max().item())


def test_outputs_depend_on_sae(model: nn.Module):
    """With the excitation weights zeroed (s constant), the logits move by over 100 times the ONNX tolerance."""
    without = copy.deepcopy(model)
    sae_layers = [m for m in without.modules() if isinstance(m, SqueezeAggregatedExcitation)]
    assert sae_layers
    with torch.no_grad():
        for sae in sae_layers:
            sae.fc_excite.weight.zero_()
    images = _images(EXAMPLE_BATCH)
    expected = _eager(model, images)
    change = (expected - _eager(without, images)).abs().max().item()
    assert change > 100 * ORT_RELATIVE_TOLERANCE * expected.abs().max().item()


def _assert_match_eager(model: nn.Module, *deployed: nn.Module) -> None:
    """Each deployed module gives eager's logits (fp32 ``assert_close``) at every batch size of RUN_BATCHES."""
    for size in RUN_BATCHES:
        images = _images(size)
        expected = _eager(model, images)
        with torch.no_grad():
            for module in deployed:
                assert_close(module(images), expected)


@pytest.mark.slow
def test_torch_export_dynamic_batch(model: nn.Module, tmp_path: Path):
    batch = torch.export.Dim('batch', min=1)
    program = torch.export.export(model, (_images(EXAMPLE_BATCH),), dynamic_shapes=({0: batch},))
    path = tmp_path / 'model.pt2'
    torch.export.save(program, path)
    _assert_match_eager(model, program.module(), torch.export.load(path).module())


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.filterwarnings('ignore:`torch.jit.save` is deprecated:FutureWarning')
@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')
def test_torchscript_with_save_and_load(model: nn.Module):
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    _assert_match_eager(model, scripted, torch.jit.load(buffer))


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def _run_onnx(session: onnxruntime.InferenceSession, images: torch.Tensor) -> torch.Tensor:
    """The session's only output for ``images`` fed to its only input."""
    (output,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return torch.from_numpy(output)


@pytest.mark.slow
def test_onnx_dynamo_in_onnxruntime(model: nn.Module, tmp_path: Path):
    path = tmp_path / 'model.onnx'
    torch.onnx.export(
        model, (_images(EXAMPLE_BATCH),), path, dynamo=True, external_data=False,
        input_names=['image'], output_names=['logits'], dynamic_shapes=({0: 'batch'},))
    assert [p.name for p in tmp_path.iterdir()] == ['model.onnx']  # one self-contained file
    onnx.checker.check_model(str(path), full_check=True)

    session = _session(path)
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.shape) == ('image', ['batch', 3, SIZE, SIZE])
    assert (graph_output.name, graph_output.shape) == ('logits', ['batch', NUM_CLASSES])
    for size in RUN_BATCHES:
        images = _images(size)
        _assert_close_to_ort_tolerance(_run_onnx(session, images), _eager(model, images))


@pytest.mark.slow
def test_timm_onnx_export_helper(tmp_path: Path):
    """timm's own ``onnx_export`` (what ``onnx_export.py --dynamo`` calls), its forward check included.

    Slow only in that it is another ONNX export, of the model ``test_onnx_dynamo_in_onnxruntime`` exports.
    """
    model = _model_with_random_bn('saeresnet18')
    path = tmp_path / 'saeresnet18.onnx'
    onnx_export(
        model, str(path), input_size=(3, SIZE, SIZE), batch_size=EXAMPLE_BATCH, use_dynamo=True,
        check_forward=True)
    session = _session(path)
    for size in RUN_BATCHES:
        images = _images(size)
        _assert_close_to_ort_tolerance(_run_onnx(session, images), _eager(model, images))
