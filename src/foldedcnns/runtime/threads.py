"""Thread settings for a block of model runs (benchmark ``--threads``, tune, predict)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from foldedcnns.errors import ConfigError


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (unchanged when ``None``); restored after."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
