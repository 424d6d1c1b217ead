"""Every error of timm-sae, under one base class, and the helpers that word their one-line messages.

Each message says what is wrong and what to do; the CLI catches ``TimmSaeError`` and prints it. The classes also
derive from the builtin exception a caller would expect (``ValueError`` for bad input, ...).
"""
from typing import Iterable, Mapping, Sequence

import torch

__all__ = [
    'TimmSaeError', 'ConversionError', 'NoWeightsError', 'CardError', 'HubError', 'CheckpointError', 'PushError',
    'ScriptNotFoundError', 'first_line', 'some_names', 'state_dict_mismatch',
]


class TimmSaeError(Exception):
    """An error of timm-sae; its message says what is wrong and what to do."""


class ConversionError(TimmSaeError, ValueError):
    """Weights that cannot be converted exactly into the model; the message says what would fit."""


class NoWeightsError(TimmSaeError, RuntimeError):
    """``pretrained=True`` where the pretrained cfg names no weights; the message names the tags that have some."""


class CardError(TimmSaeError, ValueError):
    """A results file, card record or card folder that does not hold to the schema; the message says what to fix."""


class HubError(TimmSaeError):
    """An export or push that cannot go ahead; the message says why and what to do."""


class CheckpointError(HubError, ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class PushError(HubError, RuntimeError):
    """An upload to the Hub that failed or was refused."""


class ScriptNotFoundError(TimmSaeError, FileNotFoundError):
    """The script of timm's source to run does not exist."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def some_names(names: Sequence[str], limit: int = 5) -> str:
    """The first few names of a list, and how many more there are."""
    shown = ', '.join(names[:limit])
    return f'{shown} (+{len(names) - limit} more)' if len(names) > limit else shown


def state_dict_mismatch(
        expected: Mapping[str, torch.Tensor],
        given: Mapping[str, torch.Tensor],
        ignore: Iterable[str] = (),
) -> str:
    """How ``given`` differs from ``expected`` in keys and shapes ('N missing (...); N mis-shaped (...)'), '' when
    it fits. Keys in ``ignore`` may differ in shape or be absent on either side."""
    ignore = set(ignore)
    missing = sorted(k for k in expected.keys() - given.keys() if k not in ignore)
    unexpected = sorted(k for k in given.keys() - expected.keys() if k not in ignore)
    misshaped = sorted(
        f'{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}'
        for k in expected.keys() & given.keys() - ignore if given[k].shape != expected[k].shape)
    return '; '.join(
        f'{len(names)} {what} ({some_names(names)})'
        for what, names in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)) if names)
