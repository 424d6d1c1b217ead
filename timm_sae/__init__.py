"""timm-sae: Squeeze aggregated Excitation (SaE) networks for timm.

``import timm_sae`` registers the saeresnet* / saeresnext* family in timm's model registry.
Paper: `Squeeze aggregated excitation network` - https://arxiv.org/abs/2308.13343
"""
from . import sae_resnet  # noqa: F401  (registers the models with timm)
from .acceleration import Acceleration, accelerate
from .blocks import GatedBasicBlock, GatedBottleneck, SaEBasicBlock, SaEBottleneck, set_fast_tail, set_triton_tail
from .fuse import fuse_batchnorm
from .squeeze_aggregated_excite import SqueezeAggregatedExcitation

__version__ = '0.1.0'
__all__ = [
    'SqueezeAggregatedExcitation', 'SaEBasicBlock', 'SaEBottleneck', 'GatedBasicBlock', 'GatedBottleneck',
    'Acceleration', 'accelerate', 'fuse_batchnorm', 'set_fast_tail', 'set_triton_tail',
    '__version__',
]
