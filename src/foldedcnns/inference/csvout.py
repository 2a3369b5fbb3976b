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


def prediction_columns(names: Sequence[str] | None) -> tuple[str, ...]:
    """The prediction columns of a CSV: ``label, class_name, score`` for one unnamed model (``predict``), else
    ``<name>_label, <name>_class, <name>_score`` for each named model (``scrape``)."""
    if names is None:
        return PREDICTION_COLUMNS
    return tuple(f"{name}_{column}" for name in names for column in ("label", "class", "score"))


class PredictionCSV:
    """Rows ``key, <prediction columns>[, decoded]`` appended in order; the file appears complete or not at all.

    ``class_names`` holds each model's class names (one tuple per model, or one tuple for one model);
    ``names`` the models' names for ``scrape`` (None: ``predict``'s columns); ``decoded`` adds a column that
    says whether the frame was decoded (1) or labelled from its nearest decoded frame (0). After
    :meth:`stopped_early` the rows written so far go to ``NAME.partial`` instead (no file without rows).
    """

    def __init__(self, path: Path, key_column: str, class_names: Sequence[str] | Sequence[Sequence[str]],
                 names: Sequence[str] | None = None, decoded: bool = False) -> None:
        nested = bool(class_names) and not isinstance(class_names[0], str)
        self.class_names = [tuple(c) for c in class_names] if nested else [tuple(class_names)]  # type: ignore[arg-type]
        self.path, self.key_column, self.rows = path, key_column, 0
        self.header = (key_column, *prediction_columns(names), *(("decoded",) if decoded else ()))
        self.decoded = decoded

    def __enter__(self) -> PredictionCSV:
        self._context = pending_open(self.path, "w", newline="", encoding="utf-8")
        self._pending, handle = self._context.__enter__()
        self._writer = csv.writer(handle)
        self._writer.writerow(self.header)
        return self

    def stopped_early(self) -> None:
        """A fault ended the input: keep the rows in ``NAME.partial``, never over ``NAME``."""
        self._pending.final = partial_path(self.path) if self.rows else None

    @property
    def output(self) -> str:
        """Where the rows go (``NAME`` or ``NAME.partial``); empty when nothing is kept."""
        return "" if self._pending.final is None else str(self._pending.final)

    def write(self, keys: Sequence[int | str], labels: Sequence[int], scores: Sequence[float]) -> None:
        """Rows of one model."""
        names = self.class_names[0]
        self._writer.writerows((k, label, names[label], SCORE_FORMAT.format(score))
                               for k, label, score in zip(keys, labels, scores, strict=True))
        self.rows += len(keys)

    def write_rows(self, rows: Sequence[tuple[int | str, bool, Sequence[tuple[int, float]]]]) -> None:
        """Rows ``(key, decoded, [(label, score) per model])``."""
        for key, decoded, preds in rows:
            cells: list[Any] = [key]
            for names, (label, score) in zip(self.class_names, preds, strict=True):
                cells += (label, names[label], SCORE_FORMAT.format(score))
            if self.decoded:
                cells.append(int(decoded))
            self._writer.writerow(cells)
        self.rows += len(rows)

    def __exit__(self, *exc_info: Any) -> None:
        self._context.__exit__(*exc_info)
