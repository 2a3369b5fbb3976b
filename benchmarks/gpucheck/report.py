"""What the GPU check writes to ``--out``: summary.md, best.csv, bench.csv and steps.json.

The medians and the best configurations come from :func:`foldedcnns.benchmark.summary.best_configs`
over every bench call's records; bench.csv is :func:`foldedcnns.benchmark.records.write_csv`'s format.
Utilization here is FLOPs/sec over the peak that the ``peak`` step measured for that precision (the
bench calls skip their own peak samples).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldedcnns.benchmark.records import ORIGINAL, BenchRecord, utilization, write_csv
from foldedcnns.benchmark.summary import BestRow, best_configs, format_utilization, utilization_footnotes
from foldedcnns.utils.atomic import atomic_open, atomic_write_text
from foldedcnns.utils.text import markdown_table
from gpucheck.plan import best_folded

if TYPE_CHECKING:
    from gpucheck.session import Session

BEST_COLUMNS = ("Task", "Original Throughput", "Original Backend", "Original Precision", "Original Batch",
                "Folded Throughput", "Folded Fold", "Folded Backend", "Folded Precision", "Folded Batch", "Speedup",
                "Folded FLOPs/sec", "Folded Utilization", "Original Utilization")


def _columns(prefix: str, b: BestRow | None, peaks: Mapping[str, float]) -> dict[str, str]:
    if b is None:
        cols = dict.fromkeys((f"{prefix} Throughput", f"{prefix} Backend", f"{prefix} Precision", f"{prefix} Batch",
                              f"{prefix} Utilization"), "")
        return {**cols, "Folded Fold": "", "Folded FLOPs/sec": ""} if prefix == "Folded" else cols
    util = utilization(b.flops_per_sec, peaks.get(b.precision))
    cols = {f"{prefix} Throughput": f"{b.throughput:.1f}", f"{prefix} Backend": b.backend,
            f"{prefix} Precision": b.precision, f"{prefix} Batch": str(b.batch_size),
            f"{prefix} Utilization": "" if util is None else f"{util:.4f}"}
    if prefix == "Folded":
        cols.update({"Folded Fold": str(b.fold), "Folded FLOPs/sec": f"{b.flops_per_sec:.4g}"})
    return cols


def best_table(records: Sequence[BenchRecord], peaks: Mapping[str, float]) -> list[dict[str, str]]:
    """Per task (first-seen order), the :data:`BEST_COLUMNS` row: best original and best folded configuration
    over any backend, precision and batch size (``summary.best_configs``), the best-vs-best speedup, and
    Utilization against ``peaks[precision]`` (empty without that peak)."""
    best = best_configs(records)
    out = []
    for model in dict.fromkeys(b.model for b in best):
        original = next((b for b in best if b.model == model and b.mode == ORIGINAL), None)
        folded = best_folded(best, model)
        speedup = folded.speedup if folded is not None and original is not None else None
        out.append({"Task": model, **_columns("Original", original, peaks), **_columns("Folded", folded, peaks),
                    "Speedup": "" if speedup is None else f"{speedup:.3f}"})
    return out


def fmt_rate(value: str | float | None) -> str:
    """'123456.7' -> '123,457'; empty stays empty."""
    return "" if value in ("", None) else f"{float(value):,.0f}"


def _config_text(best: Mapping[str, str], prefix: str) -> str:
    if not best.get(f"{prefix} Batch"):
        return ""
    return f"{best[prefix + ' Backend']} {best[prefix + ' Precision']} B={best[prefix + ' Batch']}"


def _percent(value: str) -> str:
    """A CSV utilization as a percentage, marked (and footnoted below the table) when above 100 %."""
    return format_utilization(float(value)) if value else ""


def summary_markdown(state: Mapping[str, Any], best: Sequence[Mapping[str, str]]) -> str:
    """The Markdown report: machine, steps, peaks, best-original vs best-folded per task, stages, notices."""
    versions = state.get("versions") or {}
    lines = [f"# GPU check: {state.get('status', 'running')}", ""]
    machine = [("device", state.get("device")), ("GPU", versions.get("gpu_name")),
               ("torch", versions.get("torch")), ("CUDA", versions.get("cuda")), ("cuDNN", versions.get("cudnn")),
               ("driver", versions.get("driver")), ("foldedcnns", versions.get("foldedcnns")),
               ("python", versions.get("python")),
               ("budget", f"{state.get('elapsed_s', 0):.0f} s used of {state.get('budget_s', 0):.0f} s"),
               ("mode", "quick" if state.get("quick") else "full"), ("started", state.get("started"))]
    lines += [markdown_table(["", ""], [(k, v) for k, v in machine if v not in (None, "")]), "", "## Steps", ""]
    lines.append(markdown_table(["step", "status", "seconds", "detail"],
                        [(s["name"], s["status"], f"{s['seconds']:.1f}", s["detail"]) for s in state.get("steps", [])]))
    peaks = state.get("peaks") or {}
    if peaks:
        lines += ["", "## Measured peak (dense matmul)", "",
                  markdown_table(["precision", "TFLOP/s"], [(p, f"{v / 1e12:.2f}") for p, v in peaks.items()])]
    lines += ["", "## Best original vs best folded, per task", "",
              "Medians over trials; any backend, precision and batch size measured; Utilization = FLOPs/sec over "
              "the measured peak of that precision.", ""]
    if best:
        lines.append(markdown_table(
            ["task", "best original img/s", "config", "best folded img/s", "f", "config", "speedup",
             "folded util.", "original util."],
            [(b["Task"], fmt_rate(b["Original Throughput"]), _config_text(b, "Original"),
              fmt_rate(b["Folded Throughput"]), b["Folded Fold"], _config_text(b, "Folded"),
              f"{float(b['Speedup']):.2f}x" if b["Speedup"] else "", _percent(b["Folded Utilization"]),
              _percent(b["Original Utilization"])) for b in best]))
        cells = [b[f"{mode} Utilization"] for b in best for mode in ("Folded", "Original")]
        notes = utilization_footnotes((float(c) for c in cells if c), markdown=True)
        lines += ["", *notes] if notes else []
    else:
        lines.append("No benchmark records yet.")
    headline = state.get("headline") or {}
    if headline:
        lines += ["", "## Headline stages", "",
                  markdown_table(["stage", "tasks", "settings", "seconds"],
                         [(s["stage"], ", ".join(s["tasks"]), s["settings"], f"{s['seconds']:.1f}")
                          for s in headline.get("stages", [])])]
        if headline.get("not_measured"):
            lines += ["", "Not measured (budget): " + ", ".join(headline["not_measured"])]
    notices = state.get("notices") or []
    if notices:
        lines += ["", "## Notices", ""] + [f"- {n}" for n in notices]
    return "\n".join(lines) + "\n"


def write_csv_rows(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """A CSV of ``columns`` (other keys are left out), written atomically."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def state_of(session: Session) -> dict[str, Any]:
    """Everything steps.json holds: versions, plan, per-step status and data, stages, notices, GPU snapshots."""
    return {"status": session.status(), "device": session.device, "quick": session.args.quick,
            "budget_s": session.budget_s, "elapsed_s": session.elapsed(), "started": session.started,
            "versions": session.versions, "tasks": session.tasks, "peaks": session.peaks,
            "plan": asdict(session.plan), "steps": [asdict(s) for s in session.steps], "headline": session.headline,
            "notices": session.notices, "gpu_state": session.gpu_state, "work": str(session.work)}


def write_reports(session: Session) -> None:
    """(Re)write best.csv, bench.csv, steps.json and summary.md in ``session.out``."""
    best = best_table(session.records, session.peaks)
    write_csv_rows(session.out / "best.csv", BEST_COLUMNS, best)
    write_csv(session.out / "bench.csv", session.records)
    state = state_of(session)
    atomic_write_text(session.out / "steps.json", json.dumps(state, indent=2, default=str))
    atomic_write_text(session.out / "summary.md", summary_markdown(state, best))
