"""Deprecated alias of ``timm_sae.checkpoint``, where the weight-file reader lives now; it goes after one release."""
import warnings

from .checkpoint import Checkpoint, check_finite, nonfinite_weights, read_checkpoint, read_weights_file

__all__ = ['Checkpoint', 'read_checkpoint', 'read_weights_file', 'nonfinite_weights', 'check_finite']

warnings.warn(
    'timm_sae.weights_file is deprecated: import from timm_sae.checkpoint', DeprecationWarning, stacklevel=2)
