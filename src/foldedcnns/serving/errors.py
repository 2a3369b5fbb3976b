"""Errors the server answers with an HTTP status: each has ``status`` and a one-line message.

``retry_after`` (seconds) goes into a ``Retry-After`` header: 503s say when to come back.
"""

from __future__ import annotations

from foldedcnns.errors import FoldedCNNsError


class ServingError(FoldedCNNsError):
    """A request the server answers with an error status (``status``); the message is one line."""

    status = 500
    retry_after: int | None = None


class BadRequest(ServingError):
    status = 400


class RequestTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class QueueFull(ServingError):
    status, retry_after = 503, 1


class ShuttingDown(ServingError):
    status, retry_after = 503, 5


class DeadlineExceeded(ServingError):
    status = 504


class BatchFailed(ServingError):
    status = 500
