"""What benchmarks/speed.py and profile_speed.py measure: the pairs of models timed together, and the modes."""
from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ['Entry', 'Pair', 'PAIRS', 'MODES']


@dataclass(frozen=True)
class Entry:
    """One model in a pair: a timm model name, optionally with its BatchNorms folded, or (SaE) with timm's own
    block tail (``timm_sae.set_fast_tail(model, False)``: SE's form in training, the narrow squeeze and the gate
    applied in place in eval), as the SaE blocks ran before ``timm_sae.tail``: the before/after comparison."""
    model: str
    bn_folded: bool = False
    timm_tail: bool = False
    accelerated: bool = False  # timm_sae.accelerate(model): timm's SE / ECA blocks in the exact fast forms
    triton_tail: bool = False  # timm_sae.set_triton_tail(model, True): the training tail's Triton kernels (CUDA)

    @property
    def label(self) -> str:
        if self.timm_tail:
            return f'{self.model} (timm tail)'
        if self.accelerated:
            return f'{self.model} (accelerated)'
        if self.triton_tail:
            return f'{self.model} (Triton tail)'
        return f'{self.model} (BN folded)' if self.bn_folded else self.model


@dataclass(frozen=True)
class Pair:
    """Models timed together; ratios are taken against each of ``references`` (labels)."""
    entries: Tuple[Entry, ...]
    references: Tuple[str, ...]
    tasks: Tuple[str, ...] = ('infer', 'train')
    note: str = ''


TIMM_TAIL_NOTE = (
    '{model} (timm tail): the same model and weights with timm_sae.set_fast_tail(model, False), i.e. timm\'s own '
    'block tail (the SE form in training; in eval the narrow squeeze and the gate applied in place), as the '
    'package ran before timm_sae.tail; vs it is the gain of the exact tail (training) and of the gate folded into '
    'BatchNorm (eval).')
PAIRS: Dict[str, Pair] = {
    'resnet50': Pair(
        (Entry('saeresnet50'), Entry('saeresnet50', timm_tail=True), Entry('seresnet50'), Entry('resnet50')),
        ('saeresnet50 (timm tail)', 'seresnet50', 'resnet50'), note=TIMM_TAIL_NOTE.format(model='saeresnet50'),
    ),
    'resnet50_triton': Pair(
        (Entry('saeresnet50', triton_tail=True), Entry('saeresnet50'), Entry('saeresnet50', timm_tail=True),
         Entry('resnet50')),
        ('saeresnet50', 'saeresnet50 (timm tail)', 'resnet50'), tasks=('train',),
        note='saeresnet50 (Triton tail): the same model with timm_sae.set_triton_tail(model, True), the exact '
             'training tail\'s Triton kernels (CUDA only; eager: torch.compile traces the PyTorch forms).',
    ),
    'resnet18': Pair(
        (Entry('saeresnet18'), Entry('saeresnet18', timm_tail=True), Entry('seresnet18'), Entry('resnet18')),
        ('saeresnet18 (timm tail)', 'seresnet18', 'resnet18'), note=TIMM_TAIL_NOTE.format(model='saeresnet18'),
    ),
    'resnext50': Pair(
        (Entry('saeresnext50_32x4d'), Entry('saeresnext50_32x4d', timm_tail=True), Entry('seresnext50_32x4d'),
         Entry('resnext50_32x4d')),
        ('saeresnext50_32x4d (timm tail)', 'seresnext50_32x4d', 'resnext50_32x4d'),
        note=TIMM_TAIL_NOTE.format(model='saeresnext50_32x4d'),
    ),
    'seresnet50': Pair(
        (Entry('seresnet50', accelerated=True), Entry('seresnet50'), Entry('resnet50')), ('seresnet50', 'resnet50'),
        note='seresnet50 (accelerated): timm\'s seresnet50 after timm_sae.accelerate(model), the same weights.',
    ),
    'ecaresnet50d': Pair(
        (Entry('ecaresnet50d', accelerated=True), Entry('ecaresnet50d'), Entry('resnet50d')),
        ('ecaresnet50d', 'resnet50d'),
        note='ecaresnet50d (accelerated): timm\'s ecaresnet50d after timm_sae.accelerate(model), the same weights.',
    ),
    'resnet50_bn_folded': Pair(
        (Entry('saeresnet50', True), Entry('seresnet50', True), Entry('seresnet50')),
        ('seresnet50 (BN folded)', 'seresnet50'),
        tasks=('infer',),
        note='BatchNorm folded into the convs (timm_sae.fuse.fuse_batchnorm), inference only. '
             'vs seresnet50 (BN folded) is the fair comparison, both folded; vs seresnet50 (unfolded) '
             'is not: it shows what folding buys, and folding speeds up SE alike.',
    ),
}
# mode -> (task, channels_last)
MODES: Dict[str, Tuple[str, bool]] = {
    'infer-nchw': ('infer', False),
    'infer-cl': ('infer', True),
    'train-nchw': ('train', False),
    'train-cl': ('train', True),
}
