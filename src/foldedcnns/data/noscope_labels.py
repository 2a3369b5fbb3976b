"""Per-frame labels of a NoScope video from its detection CSV (columns ``frame``, ``object_name``, ...).

The CSV is untrusted input: a row that is not a frame number from 0 to :data:`MAX_FRAME`, a file
that is not UTF-8 text or not CSV, gives a one-line :class:`DataError` naming the file and line, so
a broken CSV never asks for a huge label array.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from foldedcnns.errors import DataError, first_line

MAX_FRAME = 10**8  # about five weeks of 30 fps video: a larger frame number is a broken CSV

__all__ = ["MAX_FRAME", "label_frames"]


def label_frames(csv_path: str | os.PathLike[str], object_name: str, num_frames: int | None = None) -> np.ndarray:
    """Per-frame labels from a NoScope CSV: ``uint8`` array of 0/1, length max frame + 1.

    ``num_frames`` fixes the length instead (frames the CSV never mentions are 0). Errors name the
    file and the line; a CSV that never lists ``object_name`` is an error that lists the objects it has.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"labels CSV {path} does not exist; pass the NoScope detection CSV of the video")
    frames: list[int] = []
    objects: set[str] = set()
    last_frame, line = -1, 1
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if "frame" not in header or "object_name" not in header:
                raise DataError(f"{path} is not a NoScope labels CSV: its header {header[:6]} lacks 'frame' and "
                                "'object_name'")
            frame_col, object_col = header.index("frame"), header.index("object_name")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                frame = _frame_number(row, frame_col, path, line)
                name = row[object_col].strip() if object_col < len(row) else ""
                last_frame = max(last_frame, frame)
                objects.add(name)
                if name == object_name:
                    frames.append(frame)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}:{line}: not a readable CSV text file ({first_line(exc)}); fix the file") from exc
    if last_frame < 0:
        raise DataError(f"{path} has no rows; pass the NoScope detection CSV of the video")
    if not frames:
        raise DataError(f"{path} never lists object {object_name!r}; it has: {', '.join(sorted(objects)[:10])}")
    total = last_frame + 1 if num_frames is None else num_frames
    if total <= last_frame:
        raise DataError(f"{path} lists frame {last_frame} but the video has {total} frames; "
                        "is the CSV for this video?")
    labels = np.zeros(total, dtype=np.uint8)
    labels[np.asarray(frames, dtype=np.int64)] = 1
    return labels


def _frame_number(row: list[str], column: int, path: Path, line: int) -> int:
    try:
        value = float(row[column])
    except (ValueError, IndexError):
        value = math.nan
    if not 0 <= value <= MAX_FRAME:  # also NaN: a missing or non-numeric cell
        raise DataError(f"{path}:{line}: bad row {row[:4]} (frame must be a number from 0 to {MAX_FRAME}); "
                        "fix the file")
    return int(value)
