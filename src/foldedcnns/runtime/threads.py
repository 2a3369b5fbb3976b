"""Thread settings for a block of model runs (benchmark ``--threads``, tune, predict)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from foldedcnns.errors import ConfigError

# More threads than this is a typo (each is an OS thread; PyTorch would start them all).
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))


def check_threads(threads: int | None) -> int | None:
    """``threads`` (None: PyTorch's count), or a one-line :class:`ConfigError` unless an integer from 1 to
    :data:`MAX_THREADS`."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (unchanged when ``None``); restored after."""
    check_threads(threads)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
