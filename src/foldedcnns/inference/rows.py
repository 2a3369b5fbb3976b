"""Rows of the output CSV from the predictions of one or more models over the same frames, in order.

Each model (``scrape`` runs several on one decode) classifies the frames in its own batches, so their
predictions arrive at different times; :class:`RowAssembler` emits a row once every model has
predicted its frame. When the decoder skipped frames (``--decode-frames ref|key``) every frame still
gets a row: a frame that was not decoded takes the predictions of the nearest decoded frame (the
earlier one on a tie) and is marked ``decoded = False``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

Prediction = tuple[int, float]
Row = tuple[int | str, bool, list[Prediction]]


class RowAssembler:
    """Join ``models`` streams of predictions into rows (see the module docstring).

    ``frames``: the video's frame count, when frames may be skipped (rows are filled up to it by
    :meth:`finish`); None when every decoded key is a row.
    """

    def __init__(self, models: int, frames: int | None = None) -> None:
        self._keys: deque[int | str] = deque()
        self._preds: list[deque[Prediction]] = [deque() for _ in range(models)]
        self.frames = frames
        self._last: tuple[int, list[Prediction]] | None = None

    def add_keys(self, keys: Sequence[int | str]) -> None:
        """Keys of decoded frames, in order."""
        self._keys.extend(keys)

    def add(self, model: int, labels: Sequence[int], scores: Sequence[float]) -> None:
        """Predictions of ``model`` for its next frames, in order."""
        self._preds[model].extend(zip(labels, scores, strict=True))

    def ready(self) -> list[Row]:
        """Rows complete so far, in order (each returned once)."""
        count = min(len(q) for q in self._preds)
        rows: list[Row] = []
        for _ in range(count):
            key = self._keys.popleft()
            preds = [q.popleft() for q in self._preds]
            if self.frames is None or not isinstance(key, int):
                rows.append((key, True, preds))
                continue
            rows.extend(self._gap_before(key, preds))
            rows.append((key, True, preds))
            self._last = (key, preds)
        return rows

    def _gap_before(self, key: int, preds: list[Prediction]) -> list[Row]:
        if self._last is None:
            return [(k, False, preds) for k in range(key)]
        before, earlier = self._last
        return [(k, False, earlier if k - before <= key - k else preds) for k in range(before + 1, key)]

    def finish(self, complete: bool = True) -> list[Row]:
        """The last rows; when the input was ``complete`` (no fault), the frames after the last decoded one up
        to the frame count take its predictions."""
        rows = self.ready()
        if complete and self.frames is not None and self._last is not None:
            last, preds = self._last
            rows.extend((k, False, preds) for k in range(last + 1, self.frames))
        return rows
