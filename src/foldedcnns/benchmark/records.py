"""Benchmark records and their CSV file.

The CSV keeps the original's columns first, ``Model,Trial,Batch Size,Mode,Fold,Throughput,FLOPs/sec,
TputNorm,FLOPNorm``, then ``Backend,Precision,Device,Utilization``, ``Images`` (the images one
call really ran: ``Batch Size`` rounded up to a multiple of ``Fold``) and ``Ops Unit``: what ``FLOPs/sec``
counts, ``FLOP/s``, or ``int8 OP/s`` (integer multiply-adds x 2) on int8 rows, whose Utilization is
against the int8 matmul peak (:mod:`foldedcnns.benchmark.peak`), and ``Utilization Note``: why a
Utilization is above 1 (:func:`utilization_note`), empty otherwise. ``TputNorm`` and ``FLOPNorm``
divide by the Original row (fold 1) of the same model, trial, batch size, backend, precision and
device; ``Utilization`` is FLOPs/sec over the measured dense-matmul peak of that device and
precision. A ratio that has no reference is an empty cell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from foldedcnns.errors import DataError
from foldedcnns.runtime.backends import is_quantized
from foldedcnns.utils.atomic import atomic_open

REQUIRED_COLUMNS: tuple[str, ...] = (
    "Model", "Trial", "Batch Size", "Mode", "Fold", "Throughput", "FLOPs/sec", "TputNorm", "FLOPNorm",
    "Backend", "Precision", "Device", "Utilization", "Images",
)
# read_csv accepts files without the columns after REQUIRED_COLUMNS
CSV_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "Ops Unit", "Utilization Note")
ORIGINAL = "Original"
# Why FLOPs/sec can exceed the best dense matmul of its precision: the FLOPs counted are 2 x MACs of a
# direct convolution (analysis.flops), whatever algorithm the engine runs.
ABOVE_PEAK_NOTE = ("over 100 % of the dense-matmul peak: the engine's convolutions outran the best matmul "
                   "measured here (Winograd or fused convolution kernels do fewer operations than the 2 x MACs "
                   "counted)")


def utilization_note(utilization: float | None) -> str:
    """Why ``utilization`` is above 1 (:data:`ABOVE_PEAK_NOTE`), ``""`` when it is not (or unknown).

    The peak is the best dense matmul of the engines present (:mod:`foldedcnns.benchmark.peak`), so a row
    above it ran a convolution algorithm that does less work than counted, or a kernel better than any
    dense matmul measured: the figure is then not a fraction of the machine's ceiling, and says so.
    """
    return ABOVE_PEAK_NOTE if utilization is not None and math.isfinite(utilization) and utilization > 1 else ""


def ops_unit(precision: str) -> str:
    """What a rate at ``precision`` counts: ``int8 OP/s`` (integer ops) for int8, else ``FLOP/s``."""
    return "int8 OP/s" if is_quantized(precision) else "FLOP/s"


@dataclass(frozen=True)
class BenchRecord:
    """One timed measurement of one configuration in one trial.

    ``throughput`` is images/s; ``flops_per_sec = flops_per_image * throughput``.
    """

    model: str
    trial: int
    batch_size: int
    mode: str
    fold: int
    throughput: float
    flops_per_sec: float
    backend: str
    precision: str
    device: str
    images: int
    tput_norm: float | None = None
    flop_norm: float | None = None
    utilization: float | None = None
    flops_per_image: float = 0.0
    calls: int = 0
    seconds: float = 0.0

    @property
    def config_key(self) -> tuple[str, str, int, int, str, str, str]:
        """What identifies a configuration across trials."""
        return (self.model, self.mode, self.fold, self.batch_size, self.backend, self.precision, self.device)

    @property
    def reference_key(self) -> tuple[str, int, int, str, str, str]:
        """The Original row a ratio divides by: same model, trial, batch size, backend, precision, device."""
        return (self.model, self.trial, self.batch_size, self.backend, self.precision, self.device)

    @property
    def ops_unit(self) -> str:
        """What ``flops_per_sec`` counts: ``FLOP/s``, or ``int8 OP/s`` on an int8 row."""
        return ops_unit(self.precision)

    def to_row(self) -> dict[str, str]:
        return {
            "Model": self.model, "Trial": str(self.trial), "Batch Size": str(self.batch_size), "Mode": self.mode,
            "Fold": str(self.fold), "Throughput": f"{self.throughput:.2f}", "FLOPs/sec": f"{self.flops_per_sec:.6g}",
            "TputNorm": _opt(self.tput_norm, 4), "FLOPNorm": _opt(self.flop_norm, 4), "Backend": self.backend,
            "Precision": self.precision, "Device": self.device, "Utilization": _opt(self.utilization, 4),
            "Images": str(self.images), "Ops Unit": self.ops_unit, "Utilization Note": self.utilization_note,
        }

    @property
    def utilization_note(self) -> str:
        """Why ``utilization`` is above 1, ``""`` when it is not (:func:`utilization_note`)."""
        return utilization_note(self.utilization)


def _opt(value: float | None, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def flops_per_sec(flops_per_image: float, throughput: float) -> float:
    """FLOPs/sec of a run: per-image FLOPs (2 x MACs of one folded input / f) times images/s."""
    return flops_per_image * throughput


def utilization(flops_per_second: float, peak: float | None) -> float | None:
    """Fraction of the measured peak; ``None`` when no peak was measured."""
    return None if not peak else flops_per_second / peak


def add_ratios(records: Sequence[BenchRecord]) -> list[BenchRecord]:
    """Fill ``tput_norm`` and ``flop_norm`` against the matching Original row (1.0 on Original rows)."""
    originals = {r.reference_key: r for r in records if r.mode == ORIGINAL}
    out = []
    for r in records:
        ref = originals.get(r.reference_key)
        if ref is None or ref.throughput <= 0:
            out.append(replace(r, tput_norm=None, flop_norm=None))
            continue
        flop_norm = r.flops_per_sec / ref.flops_per_sec if ref.flops_per_sec > 0 else None
        out.append(replace(r, tput_norm=r.throughput / ref.throughput, flop_norm=flop_norm))
    return out


def write_csv(path: str | Path, records: Iterable[BenchRecord]) -> Path:
    """Write the records atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for record in records:
            writer.writerow(record.to_row())
    return path


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def read_csv(path: str | Path) -> list[BenchRecord]:
    """Read a CSV written by :func:`write_csv` (extra columns are ignored, missing ones are an error)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark CSV {path} does not exist; write one with 'foldedcnns bench --out FILE'")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks the columns {', '.join(missing)}; pass a CSV written by 'foldedcnns bench'")
        try:
            return [BenchRecord(
                model=row["Model"], trial=int(row["Trial"]), batch_size=int(row["Batch Size"]), mode=row["Mode"],
                fold=int(row["Fold"]), throughput=float(row["Throughput"]), flops_per_sec=float(row["FLOPs/sec"]),
                backend=row["Backend"], precision=row["Precision"], device=row["Device"], images=int(row["Images"]),
                tput_norm=_float(row["TputNorm"]), flop_norm=_float(row["FLOPNorm"]),
                utilization=_float(row["Utilization"]),
            ) for row in reader]
        except ValueError as exc:
            raise DataError(f"{path}: bad value on line {reader.line_num} ({exc}); the CSV was edited or cut") from exc
