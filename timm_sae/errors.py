"""Every error of timm-sae, under one base class, and the helpers that word their one-line messages.

Each message says what is wrong and what to do; the CLI catches ``TimmSaeError`` and prints it. The classes also
derive from the builtin exception a caller would expect (``ValueError`` for bad input, ...).
"""
from typing import Sequence

__all__ = [
    'TimmSaeError', 'ConversionError', 'NoWeightsError', 'CardError', 'HubError', 'CheckpointError', 'PushError',
    'ScriptNotFoundError', 'first_line', 'some_names',
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
