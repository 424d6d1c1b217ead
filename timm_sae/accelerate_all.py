"""Importing this module makes every timm ResNet built afterwards accelerated (``timm_sae.accelerate``).

For timm's scripts, which build their models themselves::

    python train.py /data --device-modules timm_sae.accelerate_all --model seresnext50_32x4d ...
    python -m timm_sae.run --accelerate validate.py ...       (validate.py, benchmark.py, inference.py)

The SE, ECA and SaE blocks of each ``timm.models.resnet.ResNet`` get the exact fast forms as the model is
constructed, before any weights load (the state dict is unchanged); every other model is left alone. Importing
``timm_sae`` alone changes nothing of timm's models: this module is the opt-in.
"""
import functools
import logging

from timm.models.resnet import ResNet

from .acceleration import accelerate

__all__ = []
_logger = logging.getLogger(__name__)

if not getattr(ResNet.__init__, 'timm_sae_accelerates', False):
    _timm_init = ResNet.__init__

    @functools.wraps(_timm_init)
    def _accelerated_init(self: ResNet, *args, **kwargs) -> None:
        _timm_init(self, *args, **kwargs)
        _logger.info('timm_sae.accelerate_all: %s', accelerate(self).acceleration)

    _accelerated_init.timm_sae_accelerates = True  # type: ignore[attr-defined]  # importing twice patches once
    ResNet.__init__ = _accelerated_init  # type: ignore[method-assign]  # the opt-in this module is for
