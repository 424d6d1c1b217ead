"""Activation memory that one training forward keeps for the backward, independent of the machine.

The unique storages that autograd saves during the forward (``torch.autograd.graph.saved_tensors_hooks``)
together with every tensor still alive in Python afterwards (so that tensors kept on an autograd ctx count
too), parameters, buffers, the input and the output excluded. A GPU's peak memory adds the allocator's
transient buffers on top; these bytes are what a deeper batch multiplies.
"""
import gc
import warnings
from typing import Dict, Tuple

import torch

__all__ = ['kept_activation_bytes']


def _key(t: torch.Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def kept_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes kept for the backward by one forward of ``model`` (in its current mode) on ``x``."""
    owned = {_key(p) for p in model.parameters()} | {_key(b) for b in model.buffers()}
    kept: Dict[Tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[_key(t)] = t.untyped_storage().nbytes()
        return t

    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        before = {_key(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on every object touches deprecated module attributes
        warnings.simplefilter('ignore')
        alive = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o is not out and o is not x]
    for o in alive:
        key = _key(o)
        if key not in before and key[1] > 0:
            kept[key] = o.untyped_storage().nbytes()
    del out
    return sum(size for key, size in kept.items() if key not in owned)
