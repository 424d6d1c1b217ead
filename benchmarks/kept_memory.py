"""Activation memory that one training forward keeps for the backward, independent of the machine.

The unique storages that autograd saves during the forward (``torch.autograd.graph.saved_tensors_hooks``)
together with every tensor still alive in Python afterwards (so that tensors kept on an autograd ctx count
too), parameters, buffers, the input and the output excluded. A GPU's peak memory adds the allocator's
transient buffers on top; these bytes are what a deeper batch multiplies.
"""
import gc
import warnings
from typing import Dict, List, Tuple

import torch

__all__ = ['kept_activation_bytes']

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _key(t: torch.Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _live_tensors() -> List[torch.Tensor]:
    """The plain tensors and parameters alive in Python that own memory.

    Tensor subclasses and functional tensors are left out: the fake and functional wrappers a compiler may
    leave behind hold no memory of their own (and raise on ``data_ptr()``).
    """
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on every object touches deprecated module attributes
        warnings.simplefilter('ignore')
        tensors = [o for o in gc.get_objects() if type(o) in _PLAIN_TENSOR_TYPES and not torch._is_functional_tensor(o)]
    return [t for t in tensors if t.device.type != 'meta']


def kept_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes kept for the backward by one forward of ``model`` (in its current mode) on ``x``."""
    owned = {_key(p) for p in model.parameters()} | {_key(b) for b in model.buffers()}
    kept: Dict[Tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[_key(t)] = t.untyped_storage().nbytes()
        # a detached alias keeps the storage alive (so its address is not reused within the forward) without
        # the reference cycle that saving an operation's own output creates, which would leak the model
        return t.detach()

    before = {_key(t) for t in _live_tensors()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    for t in _live_tensors():
        key = _key(t)
        if t is not out and t is not x and key not in before and key[1] > 0:
            kept[key] = key[1]
    del out
    return sum(size for key, size in kept.items() if key not in owned)
