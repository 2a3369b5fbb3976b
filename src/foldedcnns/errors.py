"""The exception types: FoldedCNNsError and its kinds (config, data, shape), which the command line turns into a
one-line message and exit code 1."""

from __future__ import annotations


class FoldedCNNsError(Exception):
    """An error caused by the user's input (a bad value, a missing file), not by a bug.

    The message must say what is wrong and how to fix it, in one line.
    """


class ConfigError(FoldedCNNsError, ValueError):
    """A bad option or model description."""


class DataError(FoldedCNNsError):
    """Input data that is missing, corrupt or does not match the task."""


class ShapeError(FoldedCNNsError, ValueError):
    """A tensor whose shape does not fit the fold or the model."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters.

    The one helper that turns a library's multi-line error into the tail of a one-line message.
    """
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
