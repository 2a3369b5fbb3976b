"""The CSV files of ``predict``: where each input's CSV goes, and the writer of its rows.

Each CSV is written under a temporary name beside its final one and renamed when the input is done
(:mod:`foldedcnns.utils.atomic`). After a decoding fault the rows decoded before it go to
``NAME.partial`` instead, never over ``NAME``; an existing ``NAME`` or ``NAME.partial`` is refused
before any work unless ``overwrite`` (:func:`foldedcnns.utils.outputs.check_output`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.inference.sources import Source
from foldedcnns.utils.atomic import pending_open
from foldedcnns.utils.outputs import check_output, partial_path

SCORE_FORMAT = "{:.6f}"
CSV_SUFFIX = ".csv"
PREDICTION_COLUMNS = ("label", "class_name", "score")


def output_paths(sources: Sequence[Source], out: str | Path, overwrite: bool = False) -> list[Path]:
    """Where each source's CSV goes: ``out`` itself for one source (unless it is a folder), else ``out/<stem>.csv``.

    Unless ``overwrite``, a CSV or ``.partial`` file already at one of them is refused."""
    out = Path(out)
    if len(sources) == 1 and not out.is_dir():
        if out.suffix.lower() != CSV_SUFFIX:
            raise ConfigError(f"--out {out} must end in .csv for one input (or name a folder)")
        paths = [out]
    elif out.suffix.lower() == CSV_SUFFIX:
        raise ConfigError(f"{len(sources)} inputs give one CSV each; pass a folder as --out, not {out}")
    else:
        paths = [out / f"{s.stem}{CSV_SUFFIX}" for s in sources]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ConfigError(f"two inputs would both write {dup}; rename one or run them separately")
    for path in paths:
        check_output(path, overwrite=overwrite)
        check_output(partial_path(path), overwrite=overwrite)
    return paths


class PredictionCSV:
    """Rows ``key, label, class_name, score`` appended in order; the file appears complete or not at all.

    After :meth:`stopped_early` the rows written so far go to ``NAME.partial`` instead (no file without rows).
    """

    def __init__(self, path: Path, key_column: str, class_names: Sequence[str]) -> None:
        self.path, self.key_column, self.class_names, self.rows = path, key_column, tuple(class_names), 0

    def __enter__(self) -> PredictionCSV:
        self._context = pending_open(self.path, "w", newline="", encoding="utf-8")
        self._pending, handle = self._context.__enter__()
        self._writer = csv.writer(handle)
        self._writer.writerow((self.key_column, *PREDICTION_COLUMNS))
        return self

    def stopped_early(self) -> None:
        """A fault ended the input: keep the rows in ``NAME.partial``, never over ``NAME``."""
        self._pending.final = partial_path(self.path) if self.rows else None

    @property
    def output(self) -> str:
        """Where the rows go (``NAME`` or ``NAME.partial``); empty when nothing is kept."""
        return "" if self._pending.final is None else str(self._pending.final)

    def write(self, keys: Sequence[int | str], labels: Sequence[int], scores: Sequence[float]) -> None:
        names = self.class_names
        self._writer.writerows((k, label, names[label], SCORE_FORMAT.format(score))
                               for k, label, score in zip(keys, labels, scores, strict=True))
        self.rows += len(keys)

    def __exit__(self, *exc_info: Any) -> None:
        self._context.__exit__(*exc_info)
