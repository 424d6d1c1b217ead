"""``timm_sae.accelerate``: timm's SE, ECA and effective-SE ResNets converted in place, exactly.

float64 against the unconverted model (a deep copy): training steps (values, gradients of the input and every
parameter, running statistics, drop_path on), eval outputs, the state dict, module paths and classes, and what
the tools that look inside models see.
"""
import copy
import importlib
import subprocess
import sys
from typing import List

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from conftest import assert_equal_records, fast_or_slow, train_steps
from timm_sae import GatedBasicBlock, GatedBottleneck, accelerate
from timm_sae import blocks as blocks_module
from timm_sae._testing import relative_error

pytestmark = pytest.mark.usefixtures('single_thread')

MODELS = {
    'seresnet18': {},
    'seresnext26d_32x4d': {},
    'ecaresnet26t': {},
    'resnet26-ese': {'block_args': {'attn_layer': 'ese'}},
    'seresnet50': {},
    'ecaresnet50d': {},
    'resnet50-ese': {'block_args': {'attn_layer': 'ese'}},
}
FAST = {'seresnet18', 'seresnext26d_32x4d', 'ecaresnet26t', 'resnet26-ese'}


def _model(label: str, **kwargs) -> nn.Module:
    """A seeded float64 model with BatchNorm weights away from timm's init (so that the gates matter)."""
    torch.manual_seed(0)
    model = timm.create_model(label.split('-')[0], num_classes=5, **MODELS.get(label, {}), **kwargs).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2., generator=generator)
    return model


@pytest.mark.parametrize('label', fast_or_slow(MODELS, FAST))
def test_accelerated_model_trains_and_infers_exactly(label: str, tail_calls: List[int]):
    model = _model(label, drop_path_rate=0.1).train()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    classes = {name: type(m) for name, m in model.named_modules()}
    assert accelerate(model) is model
    blocks = [name for name, m in model.named_modules() if isinstance(m, (Bottleneck, BasicBlock))]
    assert model.acceleration.converted == blocks and not model.acceleration.left
    assert list(model.state_dict()) == keys
    assert [name for name, _ in model.named_modules()] == list(classes)
    for name, module in model.named_modules():
        assert isinstance(module, classes[name])  # a subclass of timm's block, or the same class

    x = torch.randn(4, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast = train_steps(model, x, steps=2, lr=1e-4)
    assert len(tail_calls) == 2 * len(blocks)
    assert_equal_records(fast, train_steps(reference, x, steps=2, lr=1e-4))
    with torch.no_grad():
        assert relative_error(model.eval()(x), reference.eval()(x)) < 1e-9


@pytest.mark.parametrize('label', ['seresnext26d_32x4d', 'ecaresnet26t'])
def test_eval_gate_comes_from_the_narrow_squeeze_where_the_tail_is_observed(label: str, monkeypatch):
    """A hook on each bn3 keeps the folded tail off; the gate still comes from conv3's narrow input, exactly, and
    the attention module does not run on the full-width map (as under torch.compile)."""
    model = _model(label).eval()
    reference = copy.deepcopy(model)
    accelerate(model)
    gate_class = type(model.layer1[0].se)
    calls = []
    forward = gate_class.forward
    monkeypatch.setattr(gate_class, 'forward', lambda self, x: calls.append(1) or forward(self, x))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = []
    for m in (model, reference):
        for block in m.modules():
            if isinstance(block, Bottleneck):
                block.bn3.register_forward_hook(lambda mod, args, out: None)
        with torch.no_grad():
            outputs.append(m(x))
    blocks = sum(isinstance(m, Bottleneck) for m in model.modules())
    assert len(calls) == blocks  # the reference's calls only
    assert relative_error(outputs[0], outputs[1]) < 1e-9


def test_hooked_attention_costs_no_narrow_squeeze(monkeypatch):
    """Where a hook on ``.se`` makes the attention module run on the full-width map, the block does not also
    compute the narrow squeeze it would not use; the output is timm's."""
    model = _model('seresnext26d_32x4d').eval()
    reference = copy.deepcopy(model)
    accelerate(model)
    squeezes = []
    narrow_squeeze = blocks_module.narrow_squeeze
    monkeypatch.setattr(blocks_module, 'narrow_squeeze', lambda *args: squeezes.append(1) or narrow_squeeze(*args))
    seen = []
    for m in (model, reference):
        for block in m.modules():
            if isinstance(block, Bottleneck):
                block.se.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) < 1e-9
    assert not squeezes
    assert len(seen) == 2 * sum(isinstance(m, Bottleneck) for m in model.modules())


@pytest.mark.slow
def test_compiled_nchw_training_is_timms_graph():
    """NCHW under torch.compile, where the traced exact tail trained slower (docs/speed.md), an accelerated block
    gives TorchDynamo the very graph of timm's block; channels_last, the exact tail's."""
    def traced(accelerated: bool, memory_format: torch.memory_format) -> List[str]:
        graph: List[str] = []

        def backend(gm: torch.fx.GraphModule, example_inputs):
            graph.extend(f'{node.op} {node.target}' for node in gm.graph.nodes)
            return gm.forward
        torch._dynamo.reset()
        torch.manual_seed(0)
        block = timm.create_model('seresnet50', device='meta').layer3[1].to_empty(device='cpu').train()
        if accelerated:
            accelerate(block)
        block = block.to(memory_format=memory_format)
        x = torch.randn(2, 1024, 8, 8).contiguous(memory_format=memory_format)
        torch.compile(block, backend=backend, fullgraph=True)(x)
        return graph

    assert traced(True, torch.contiguous_format) == traced(False, torch.contiguous_format)
    assert traced(True, torch.channels_last) != traced(False, torch.channels_last)


@pytest.mark.slow
def test_compiled_eval_matches_timms():
    model = _model('seresnext26d_32x4d').eval()
    reference = copy.deepcopy(model)
    compiled = torch.compile(accelerate(model), backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_error(compiled(x), reference(x)) < 1e-9


def test_model_without_gate_comes_back_unchanged():
    model = timm.create_model('resnet50', device='meta')
    cbam = timm.create_model('resnet18', block_args={'attn_layer': 'cbam'}, device='meta')
    before = {name: type(m) for name, m in model.named_modules()}
    accelerate(model)
    accelerate(cbam)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert not model.acceleration.converted and set(model.acceleration.left.values()) == {'no attention layer'}
    assert all(type(b) is BasicBlock for b in cbam.modules() if isinstance(b, BasicBlock))
    assert set(cbam.acceleration.left.values()) == {'CbamModule does not gate by the channel means alone'}
    assert '0 blocks accelerated, 8 left as they are' in str(cbam.acceleration)


def test_accelerate_twice_is_harmless():
    model = accelerate(timm.create_model('seresnet18', device='meta'))
    classes = [type(m) for m in model.modules()]
    assert accelerate(model).acceleration.converted == model.acceleration.converted
    assert [type(m) for m in model.modules()] == classes
    assert sum(isinstance(m, GatedBasicBlock) for m in model.modules()) == 8


def test_tools_see_an_accelerated_model_as_timms():
    """Hooks on ``.se`` fire and see the gated map, torch.fx traces timm's nodes, features_only, grad checkpointing
    and fuse_batchnorm behave as on the unconverted model."""
    from timm_sae import fuse_batchnorm
    model = _model('seresnext26d_32x4d').float().eval()
    reference = copy.deepcopy(model)
    accelerate(model)
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    for name, m in (('fast', model), ('timm', reference)):
        outputs = []
        handle = m.layer2[0].se.register_forward_hook(lambda mod, args, out, seen=outputs: seen.append(out.shape))
        with torch.no_grad():
            m(x)
        handle.remove()
        traced = torch.fx.symbolic_trace(m)
        seen[name] = (outputs, [n.target for n in traced.graph.nodes if n.op == 'call_module'])
    assert seen['fast'] == seen['timm'] and seen['fast'][0]
    with torch.no_grad():
        torch.testing.assert_close(fuse_batchnorm(model)(x), reference(x), rtol=1e-4, atol=1e-4)
        features = accelerate(timm.create_model('seresnet18', features_only=True, pretrained=False)).eval()
        assert len(features(x)) == 5 and features.acceleration.converted
    model.train().set_grad_checkpointing(True)
    reference.train().set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert relative_error(out, reference(x)) < 1e-4


@pytest.mark.slow
def test_accelerate_all_is_opt_in():
    """``import timm_sae`` leaves timm's models as they are; ``import timm_sae.accelerate_all`` accelerates every
    ResNet built afterwards (a fresh interpreter, as timm's scripts import it)."""
    code = (
        'import timm, timm_sae; from timm_sae import GatedBottleneck\n'
        'assert not isinstance(timm.create_model("seresnet50", device="meta").layer1[0], GatedBottleneck)\n'
        'import timm_sae.accelerate_all\n'
        'm = timm.create_model("seresnet50", device="meta")\n'
        'assert isinstance(m.layer1[0], GatedBottleneck) and len(m.acceleration.converted) == 16\n'
        'assert not timm.create_model("resnet50", device="meta").acceleration.converted\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_accelerate_all_patches_resnet_once(monkeypatch: pytest.MonkeyPatch):
    from timm.models.resnet import ResNet
    monkeypatch.setattr(ResNet, '__init__', ResNet.__init__)  # restored after the test
    sys.modules.pop('timm_sae.accelerate_all', None)
    importlib.import_module('timm_sae.accelerate_all')
    patched = ResNet.__init__
    sys.modules.pop('timm_sae.accelerate_all', None)
    importlib.import_module('timm_sae.accelerate_all')
    assert ResNet.__init__ is patched
    assert isinstance(timm.create_model('seresnet18', device='meta').layer1[0], GatedBasicBlock)
    assert isinstance(timm.create_model('ecaresnet26t', device='meta').layer1[0], GatedBottleneck)
