"""timm's SE, ECA and SaE ResNets at plain ResNet's price: ``accelerate(model)``.

The exact fast forms of the SaE blocks (``timm_sae.blocks``, ``timm_sae.tail``) hold for every ResNet block that
gates its last BatchNorm output by a function of that output's channel means: timm's ``SEModule`` (seresnet,
seresnext), ``EffectiveSEModule`` ('ese') and ``EcaModule`` (ecaresnet). ``accelerate`` gives those blocks the
fast forms in place: in training the exact tail, which keeps the plain block's activation memory; in eval the
gate folded into BatchNorm's affine (with the squeeze of the narrow conv3 input in a Bottleneck).

It changes each block's class to a subclass of its own (``GatedBottleneck`` / ``GatedBasicBlock``): parameters,
buffers, state dict keys, module paths and ``isinstance(block, Bottleneck)`` stay; where something looks
inside (a hook on the attention layer or the last norm, torch.fx, TorchScript) the block runs timm's own code.
Opt-in: ``import timm_sae`` changes nothing of timm's models; ``import timm_sae.accelerate_all`` makes every
ResNet that timm builds afterwards accelerated (for timm's scripts: ``train.py --device-modules
timm_sae.accelerate_all``).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Union

from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .blocks import GatedBasicBlock, GatedBottleneck
from .tail import gate_of

__all__ = ['Acceleration', 'accelerate']

_FAST_CLASS: Dict[type, type] = {Bottleneck: GatedBottleneck, BasicBlock: GatedBasicBlock}


@dataclass
class Acceleration:
    """What ``accelerate`` did: the paths of the blocks in the fast form, and why it left the others."""
    converted: List[str] = field(default_factory=list)
    left: Dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        reasons = sorted(set(self.left.values()))
        return (f'{len(self.converted)} blocks accelerated, {len(self.left)} left as they are'
                + (f' ({"; ".join(reasons)})' if reasons else ''))


def _why_not(block: Union[BasicBlock, Bottleneck]) -> str:
    """Why a timm block cannot take the fast forms ('' where it can)."""
    if block.se is None:
        return 'no attention layer'
    if gate_of(block.se) is None:
        return f'{type(block.se).__name__} does not gate by the channel means alone'
    return ''


def accelerate(model: nn.Module) -> nn.Module:
    """Give every SE / ECA / SaE block of a timm ResNet in ``model`` the exact fast forms, in place.

    Returns ``model``; ``model.acceleration`` (an ``Acceleration``) lists the blocks converted and why the others
    were left. Calling it again is harmless: blocks already in the fast form count as converted.
    """
    report = Acceleration()
    for name, module in model.named_modules():
        if isinstance(module, (GatedBottleneck, GatedBasicBlock)):
            report.converted.append(name)
        elif type(module) in _FAST_CLASS and isinstance(module, (BasicBlock, Bottleneck)):
            reason = _why_not(module)
            if reason:
                report.left[name] = reason
            else:
                module.__class__ = _FAST_CLASS[type(module)]
                report.converted.append(name)
    model.acceleration = report  # type: ignore[assignment]  # a plain attribute beside the modules
    return model
