"""Markdown for docs/benchmarks.md: machine details, best-vs-best tables, per-layer profiles.

Every function returns a string; ``benchmarks/headline.py`` writes them into the document between
``<!-- headline:<device>:start -->`` and ``<!-- headline:<device>:end -->`` markers, so the prose
around them stays hand-written.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.profilers import LayerProfile
from foldedcnns.benchmark.summary import RATE_HEADER, BestRow, format_utilization, table_legend
from foldedcnns.utils.text import markdown_table

SPEEDUP_TARGET = 1.5  # best folded vs best original, game and NoScope tasks (issue 11)
UTILIZATION_TARGET = 0.70  # folded FLOPs/sec over the measured peak of its precision


def machine_markdown(machine: Mapping[str, Any], peaks: Mapping[str, Peak], extra: Mapping[str, str] | None = None
                     ) -> str:
    """A bullet list: CPU/GPU, threads, versions, measured peaks."""
    lines = [f"- CPU: {machine.get('cpu')} ({machine.get('logical_cpus')} logical CPUs, "
             f"{machine.get('torch_threads')} PyTorch/ONNX Runtime threads; "
             f"flags: {', '.join(machine.get('cpu_flags') or []) or 'n/a'})"]
    if machine.get("gpu"):
        lines.append(f"- GPU: {machine['gpu']} (CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')})")
    lines.append(f"- Software: Python {machine.get('python')}, torch {machine.get('torch')} "
                 f"(CPU capability {machine.get('cpu_capability')}), onnxruntime {machine.get('onnxruntime')}, "
                 f"foldedcnns {machine.get('foldedcnns')}; {machine.get('platform')}")
    for precision, peak in peaks.items():
        unit = "GFLOP/s" if peak.unit == "FLOP/s" else "GOP/s (int8 integer ops)"
        lines.append(f"- Measured peak {precision}: {peak.flops_per_sec / 1e9:,.1f} {unit} "
                     f"(best {peak.matrix_size}x{peak.matrix_size} matmul call)")
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def with_legend(table: str, best: Sequence[BestRow]) -> str:
    """``table`` and, after a blank line (so Markdown ends the table), the footnotes its rows need."""
    legend = table_legend(best, markdown=True)
    return table + ("\n\n" + "  \n".join(legend) if legend else "")


def best_vs_best_markdown(best: Sequence[BestRow], folds: Sequence[int] = (2, 3, 4)) -> str:
    """One row per task: the best Original, then best-vs-best speedup at each fold, and the targets."""
    headers = ["task", "best original (img/s)", *[f"f={f}" for f in folds], "best folded",
               "its util.", f"speedup >= {SPEEDUP_TARGET}x", f"util. >= {UTILIZATION_TARGET:.0%}"]
    rows = []
    for model in dict.fromkeys(b.model for b in best):
        mine = [b for b in best if b.model == model]
        original = next((b for b in mine if b.mode == "Original"), None)
        folded = {b.fold: b for b in mine if b.mode == "Folded"}
        top = max(folded.values(), key=lambda b: b.throughput, default=None)
        speed_ok = "yes" if top and top.speedup and top.speedup >= SPEEDUP_TARGET else "**no**"
        util_ok = "yes" if top and top.utilization and top.utilization >= UTILIZATION_TARGET else "**no**"
        rows.append([
            model,
            f"{original.config}: {original.throughput:,.0f}" if original else "n/a",
            *[_fmt_ratio(folded[f].speedup) if f in folded else "n/a" for f in folds],
            f"f={top.fold} {top.config}: {top.throughput:,.0f}" if top else "n/a",
            format_utilization(top.utilization) if top else "n/a", speed_ok, util_ok,
        ])
    return with_legend(markdown_table(headers, rows), best)


def detail_markdown(best: Sequence[BestRow]) -> str:
    """Every best configuration: throughput, both speedups, FLOPs/sec and utilization."""
    headers = ["task", "mode", "f", "best configuration", "img/s", "vs best original", "vs same-config original",
               RATE_HEADER, "util."]
    rows = [[b.model, b.mode, b.fold, b.config, f"{b.throughput:,.0f}", _fmt_ratio(b.speedup),
             _fmt_ratio(b.same_config_speedup), f"{b.flops_per_sec / 1e9:.1f}", format_utilization(b.utilization)]
            for b in best]
    return with_legend(markdown_table(headers, rows), best)


def profile_summary_markdown(profiles: Sequence[LayerProfile], peaks: Mapping[str, Peak]) -> str:
    """Per profiled configuration: time shares by layer kind and the conv layers' FLOPs/sec."""
    headers = ["task", "f", "configuration", "conv time", "pool time", "ReLU time", "other time",
               "conv G(FL)OP/s", "conv % of peak", "first conv G(FL)OP/s"]
    rows = []
    for p in profiles:
        conv = p.flops_per_sec("conv")
        peak = peaks.get(p.precision)
        convs = [la for la in p.layers if la.kind == "conv"]
        first = convs[0].flops_per_sec if convs and convs[0].flops_per_sec else 0.0
        other = 1.0 - p.share("conv") - p.share("pool") - p.share("relu")
        rows.append([p.model, p.fold, f"{p.backend} {p.precision} B={p.batch_size}", _fmt_pct(p.share("conv")),
                     _fmt_pct(p.share("pool")), _fmt_pct(p.share("relu")), _fmt_pct(max(0.0, other)),
                     f"{conv / 1e9:.1f}", _fmt_pct(conv / peak.flops_per_sec if peak else None), f"{first / 1e9:.1f}"])
    return markdown_table(headers, rows)


def fold_profile_markdown(profiles: Sequence[LayerProfile], peaks: Mapping[str, Peak]) -> str:
    """One row per task and configuration, one column per fold: conv G(FL)OP/s (% of peak) and pool share."""
    folds = sorted({p.fold for p in profiles})
    headers = ["task", "configuration", *[f"f={f} conv G(FL)OP/s (% peak), pool share" for f in folds]]
    groups: dict[tuple[str, str], dict[int, LayerProfile]] = {}
    for p in profiles:
        groups.setdefault((p.model, f"{p.backend} {p.precision} B={p.batch_size}"), {})[p.fold] = p
    rows = []
    for (model, config), by_fold in groups.items():
        cells = []
        for f in folds:
            p = by_fold.get(f)
            if p is None:
                cells.append("n/a")
                continue
            conv, peak = p.flops_per_sec("conv"), peaks.get(p.precision)
            pct = f" ({100 * conv / peak.flops_per_sec:.0f}%)" if peak else ""
            cells.append(f"{conv / 1e9:.0f}{pct}, {100 * p.share('pool'):.0f}%")
        rows.append([model, config, *cells])
    return markdown_table(headers, rows)


def layers_markdown(profile: LayerProfile) -> str:
    """Every layer of one profile: time, share, FLOPs/sec."""
    total = profile.seconds
    rows = [[la.name, la.kind, f"{la.seconds * 1e3:.2f}", _fmt_pct(la.seconds / total if total else None),
             f"{la.flops / 1e9:.3f}", "" if la.flops_per_sec is None else f"{la.flops_per_sec / 1e9:.1f}"]
            for la in profile.layers]
    return markdown_table(["layer", "kind", "ms per call", "share", "G(FL)OP per call", RATE_HEADER], rows)


def replace_section(document: str, name: str, body: str, opening: str = "start") -> str:
    """Put ``body`` between the ``<!-- name:start -->`` (``opening``) and ``<!-- name:end -->`` markers (appended
    if absent)."""
    start, end = f"<!-- {name}:{opening} -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _m: block, document)
    return document.rstrip() + "\n\n" + block + "\n"


def write_results(out: Path, rows: list[dict], fields: list[str], title: str, text: str, doc: Path | None,
                  section: str) -> None:
    """A benchmark's outputs: ``out``.csv (every row, ``fields``), ``out``.md (``# title`` and ``text``) and, with
    ``doc``, ``text`` in that Markdown file between the ``section`` markers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".md").write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
    if doc is not None:
        document = doc.read_text(encoding="utf-8") if doc.exists() else "# Serving\n"
        doc.write_text(replace_section(document, section, text), encoding="utf-8")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}" + (f" and {doc}" if doc else ""))
