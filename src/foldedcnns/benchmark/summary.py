"""Medians over trials, and the best configuration of each model and fold.

``summarize`` collapses the per-trial records of each configuration into medians (throughput,
FLOPs/sec, utilization, and the median of the per-trial ratios TputNorm and FLOPNorm).
``best_configs`` picks, per model, the fastest Original configuration and the fastest configuration
of each fold (any backend, precision and batch size), and gives the *best-vs-best* speedup: the
median over trials of (best folded throughput / best Original throughput in the same trial).
A utilization above 1 carries its reason (``utilization_note``); the tables mark it with
:data:`ABOVE_PEAK_MARK` and :func:`table_legend` gives the footnote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from foldedcnns.benchmark.records import ORIGINAL, BenchRecord, utilization_note
from foldedcnns.runtime.backends import is_quantized


@dataclass(frozen=True)
class SummaryRow:
    """One configuration, medians over its trials."""

    model: str
    mode: str
    fold: int
    batch_size: int
    backend: str
    precision: str
    device: str
    images: int
    trials: int
    throughput: float
    throughput_min: float
    throughput_max: float
    flops_per_sec: float
    tput_norm: float | None
    flop_norm: float | None
    utilization: float | None

    @property
    def utilization_note(self) -> str:
        """Why ``utilization`` is above 1, ``""`` when it is not (:func:`records.utilization_note`)."""
        return utilization_note(self.utilization)

    @property
    def spread(self) -> float:
        """(max - min) / median of the throughput over trials: how noisy this configuration was."""
        return (self.throughput_max - self.throughput_min) / self.throughput if self.throughput else 0.0

    @property
    def config_key(self) -> tuple[str, str, int, int, str, str, str]:
        return (self.model, self.mode, self.fold, self.batch_size, self.backend, self.precision, self.device)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread, "utilization_note": self.utilization_note}


def _median_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return median(kept) if kept else None


def summarize(records: Sequence[BenchRecord]) -> list[SummaryRow]:
    """One row per configuration, in first-seen order."""
    groups: dict[tuple[Any, ...], list[BenchRecord]] = {}
    for r in records:
        groups.setdefault(r.config_key, []).append(r)
    rows = []
    for (model, mode, fold, batch, backend, precision, device), rs in groups.items():
        tput = [r.throughput for r in rs]
        util = _median_or_none([r.utilization for r in rs])
        rows.append(SummaryRow(
            model=model, mode=mode, fold=fold, batch_size=batch, backend=backend, precision=precision,
            device=device, images=rs[0].images, trials=len(rs), throughput=median(tput),
            throughput_min=min(tput), throughput_max=max(tput), flops_per_sec=median([r.flops_per_sec for r in rs]),
            tput_norm=_median_or_none([r.tput_norm for r in rs]), flop_norm=_median_or_none([r.flop_norm for r in rs]),
            utilization=util))
    return rows


@dataclass(frozen=True)
class BestRow:
    """The fastest configuration of one model at one fold (or its compound baseline)."""

    model: str
    mode: str
    fold: int
    backend: str
    precision: str
    batch_size: int
    images: int
    throughput: float
    speedup: float | None  # median per-trial ratio to the best Original configuration (best vs best)
    same_config_speedup: float | None  # median TputNorm: vs the Original at this backend, precision, batch
    flops_per_sec: float
    utilization: float | None
    trials: int

    @property
    def config(self) -> str:
        return f"{self.backend} {self.precision} B={self.batch_size}"

    @property
    def utilization_note(self) -> str:
        """Why ``utilization`` is above 1, ``""`` when it is not (:func:`records.utilization_note`)."""
        return utilization_note(self.utilization)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config, "utilization_note": self.utilization_note}


def best_configs(records: Sequence[BenchRecord]) -> list[BestRow]:
    """Per model: the best Original, the best of each folded fold, the best Compound (by median throughput)."""
    rows = summarize(records)
    per_trial: dict[tuple[Any, ...], dict[int, float]] = {}
    for r in records:
        per_trial.setdefault(r.config_key, {})[r.trial] = r.throughput
    best: dict[tuple[str, str, int], SummaryRow] = {}
    for row in rows:
        key = (row.model, row.mode, row.fold)
        if key not in best or row.throughput > best[key].throughput:
            best[key] = row
    out = []
    for (model, mode, fold), row in best.items():
        original = best.get((model, ORIGINAL, 1))
        speedup = None
        if original is not None:
            mine, ref = per_trial[row.config_key], per_trial[original.config_key]
            ratios = [mine[t] / ref[t] for t in mine if t in ref and ref[t] > 0]
            speedup = median(ratios) if ratios else None
        out.append(BestRow(model=model, mode=mode, fold=fold, backend=row.backend, precision=row.precision,
                           batch_size=row.batch_size, images=row.images, throughput=row.throughput,
                           speedup=speedup, same_config_speedup=row.tput_norm, flops_per_sec=row.flops_per_sec,
                           utilization=row.utilization, trials=row.trials))
    order = {"Original": 0, "Folded": 1, "Compound": 2}
    models = list(dict.fromkeys(r.model for r in records))
    return sorted(out, key=lambda b: (models.index(b.model), order.get(b.mode, 9), b.fold))


# G(FL)OP/s: GFLOP/s, and for int8 rows giga integer ops/s (records.ops_unit; the CSV's Ops Unit column)
RATE_HEADER = "G(FL)OP/s"
RATE_LEGEND = f"{RATE_HEADER}: GFLOP/s; int8 rows count integer ops (GOP/s), as the CSV's Ops Unit column says"
SUMMARY_HEADERS = ("model", "mode", "f", "batch", "backend", "precision", "img/s", "spread", RATE_HEADER,
                   "TputNorm", "util")
BEST_HEADERS = ("model", "mode", "f", "best config", "img/s", "vs best original", "vs same-config original",
                RATE_HEADER, "util")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


# marks a utilization above 100 % in the tables; table_legend's footnote says why
ABOVE_PEAK_MARK = "*"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def format_utilization(value: float | None) -> str:
    """``42.0%``; above 100 % with :data:`ABOVE_PEAK_MARK` (``196.0%*``), which :func:`table_legend` explains."""
    return _pct(value) + (ABOVE_PEAK_MARK if utilization_note(value) else "")


def utilization_footnotes(utilizations: Iterable[float | None], *, markdown: bool = False) -> list[str]:
    """The footnote of each distinct reason a utilization in a table is above 100 % (marked
    :data:`ABOVE_PEAK_MARK` by :func:`format_utilization`): a figure over 100 % is never printed without it.
    ``markdown`` escapes the mark, which would otherwise start a list item."""
    mark = "\\" + ABOVE_PEAK_MARK if markdown else ABOVE_PEAK_MARK
    notes = dict.fromkeys(utilization_note(u) for u in utilizations)
    return [f"{mark} utilization {note}" for note in notes if note]


def table_legend(rows: Sequence[SummaryRow | BestRow], *, markdown: bool = False) -> list[str]:
    """The footnotes the tables of ``rows`` need: what G(FL)OP/s counts where int8 rows are present, and
    why a utilization is above 100 % where one is (:func:`utilization_footnotes`)."""
    lines = [RATE_LEGEND] if any(is_quantized(r.precision) for r in rows) else []
    return lines + utilization_footnotes((r.utilization for r in rows), markdown=markdown)


def summary_table(rows: Sequence[SummaryRow]) -> list[list[Any]]:
    """Rows for :data:`SUMMARY_HEADERS` (numbers formatted for reading)."""
    return [[r.model, r.mode, r.fold, r.batch_size, r.backend, r.precision, round(r.throughput), _pct(r.spread),
             f"{r.flops_per_sec / 1e9:.2f}", _ratio(r.tput_norm), format_utilization(r.utilization)] for r in rows]


def best_table(rows: Sequence[BestRow]) -> list[list[Any]]:
    """Rows for :data:`BEST_HEADERS`."""
    return [[r.model, r.mode, r.fold, r.config, round(r.throughput), _ratio(r.speedup),
             _ratio(r.same_config_speedup), f"{r.flops_per_sec / 1e9:.2f}", format_utilization(r.utilization)]
            for r in rows]


