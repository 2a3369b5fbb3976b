"""Errors the server answers with an HTTP status, and the one mapping from an exception to its answer.

Each :class:`ServingError` has ``status`` and a one-line message; ``retry_after`` (seconds) goes into
a ``Retry-After`` header: 503s say when to come back. :func:`reply_for` is the mapping both servers
(native and Ray Serve) use, so a request that fails gets the same answer from either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from foldedcnns.errors import FoldedCNNsError, first_line

LOG = logging.getLogger("foldedcnns.serving")


class ServingError(FoldedCNNsError):
    """A request the server answers with an error status (``status``); the message is one line."""

    status = 500
    retry_after: int | None = None


class BadRequest(ServingError):
    """A body that cannot be decoded, or a crop or query that does not fit."""

    status = 400


class RequestTooLarge(ServingError):
    """A body, image or request past its declared-size limits (checked before decoding)."""

    status = 413


class UnsupportedMediaType(ServingError):
    """A Content-Type other than image/*, multipart/form-data or application/x-npy."""

    status = 415


class QueueFull(ServingError):
    """No room in the batcher's queue now; the client may retry after a second."""

    status, retry_after = 503, 1


class ShuttingDown(ServingError):
    """The server is draining; the client should retry on another replica."""

    status, retry_after = 503, 5


class DeadlineExceeded(ServingError):
    """The request was not taken into a batch within its deadline (it cost no model time)."""

    status = 504


class RequestTimeout(ServingError):
    """The body stalled or took too long to arrive (the native server's ``--body-timeout-s``)."""

    status = 408


class ClientDisconnected(ServingError):
    """The client closed the connection before its request was read: counted as 499 (nginx's code), never sent."""

    status = 499


class BatchFailed(ServingError):
    """The model failed on the batch that held this request."""

    status = 500


@dataclass(frozen=True)
class Reply:
    """An answer, free of any web framework: the status, the JSON body (or its encoded bytes) and extra headers."""

    status: int
    body: dict[str, Any] | bytes
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(status: int, message: str, retry_after: int | None = None) -> Reply:
    """``{"error": "<one line>", "status": N}``, with ``Retry-After`` when ``retry_after`` is given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Reply(status, {"error": " ".join(message.split()), "status": status}, headers)


def reply_for(exc: Exception) -> Reply:
    """The answer to a request that raised ``exc``: a :class:`ServingError` its own status (and
    ``Retry-After``); any other :class:`FoldedCNNsError` 400 (the request's fault: a bad crop, wrong
    images); anything else 500 with its type and first line (a bug: logged with its traceback, and the
    server goes on)."""
    if isinstance(exc, ServingError):
        return error_reply(exc.status, str(exc), exc.retry_after)
    if isinstance(exc, FoldedCNNsError):
        return error_reply(400, first_line(exc, 300))
    LOG.error("unexpected error in /v1/predict", exc_info=exc)
    return error_reply(500, f"{type(exc).__name__}: {first_line(exc)}")
