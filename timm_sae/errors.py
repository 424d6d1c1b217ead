"""The errors of the export, conversion and push tooling: each message says what is wrong and what to do."""

__all__ = ['HubError', 'CheckpointError', 'PushError', 'first_line']


class HubError(Exception):
    """An export or push that cannot go ahead; the message says why and what to do."""


class CheckpointError(HubError, ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class PushError(HubError, RuntimeError):
    """An upload to the Hub that failed or was refused."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
