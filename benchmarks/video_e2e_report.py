"""Medians, issue-23 checks and Markdown of ``video_e2e.py``'s trials; the marked-section writer for ``--doc``."""

from __future__ import annotations

import statistics
from typing import Any

from docs_report import replace_section  # this folder's docs helpers

from foldedcnns.data.video import SMALL_FRAME_PIXELS
from foldedcnns.utils.text import markdown_table

LIMIT = "decode-ffmpeg"  # the row every frames/s is divided by
STARTUP_ALLOWANCE_S = 4.0  # the whole predict command may take the clip's decode time plus this (issue 23)
LABELS = {
    "decode-1": "PyAV decode only, 1 thread (no pixel conversion)",
    "decode-ffmpeg": "PyAV decode only, FFmpeg's threads: **the decode limit**",
    "plain": "plain script: PyAV + `to_ndarray` RGB + NumPy crop + OpenVINO bf16 IR (`video_plain.py`)",
    "predict-eager": "`predict` eager fp32",
    "predict-openvino": "`predict --backend openvino --precision bf16`",
    "scrape-3": "`scrape`, 3 tasks (openvino bf16)",
    "ffmpeg-threads": "`predict`, one sequential decoder with FFmpeg's threads",
    "cache-build": "`data cache`: decode once into model inputs",
    "cache-predict": "`predict` on the cache folder",
    "ref": "`--decode-frames ref` (no non-reference B-frames)",
    "key": "`--decode-frames key` (keyframes only)",
    "fast": "`--fast-decode` (no deblocking filter)",
}
LEVERS = ("ref", "key", "fast")


def medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """size -> name -> median frames/s, seconds and whole-command seconds over the trials; ``same_rows`` true
    only when it held in every trial; median ``agreement``."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        table.setdefault(row["size"], {}).setdefault(row["name"], {"runs": []})["runs"].append(row)
    for names in table.values():
        for cell in names.values():
            runs = cell.pop("runs")

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
                values = [r[key] for r in runs if r.get(key) is not None]
                return statistics.median(values) if values else None

            same = [r["same_rows"] for r in runs if r.get("same_rows") is not None]
            cell.update({"trials": len(runs), "frames": runs[0]["frames"], "fps": med("fps"),
                         "seconds": med("seconds"), "wall_s": med("wall_s"), "decoded": med("decoded"),
                         "agreement": med("agreement"), "same_rows": all(same) if same else None,
                         "fps_trials": [round(r["fps"], 1) for r in runs]})
    return table


def label(name: str, clip: dict[str, Any]) -> str:
    if name.startswith("decoders-"):
        n = int(name.split("-")[1])
        width, height = (int(v) for v in clip["size"].split("x"))
        threads = "one thread each" if n > 1 else (
            "one thread" if width * height <= SMALL_FRAME_PIXELS else "FFmpeg's threads")
        auto = " = auto here" if n == clip["default_decoders"] else ""
        return f"`predict --decoders {n}` (openvino bf16, {threads}){auto}"
    return LABELS.get(name, name)


def _rows_cell(name: str, cell: dict[str, Any], full: dict[str, Any] | None) -> str:
    parts = []
    if cell["same_rows"] is not None:
        parts.append("identical" if cell["same_rows"] else "**differ**")
    if cell["agreement"] is not None:
        parts.append(f"{cell['agreement']:.1%} same label")
    if name in LEVERS and cell["decoded"] is not None:
        parts.append(f"decoded {cell['decoded']:,.0f} of {cell['frames']:,}")
    if name in LEVERS and full and full["fps"]:
        parts.append(f"{cell['fps'] / full['fps']:.2f}x full decoding")
    return "; ".join(parts) or "-"


def full_decoding(clip: dict[str, Any]) -> str:
    """The row the fidelity levers are compared with: ``predict`` with the default (auto) decoders."""
    return f"decoders-{clip['default_decoders']}"


def ffmpeg_row(names: dict[str, Any]) -> str:
    return "ffmpeg-threads" if "ffmpeg-threads" in names else "decoders-1"


def size_table(size: str, names: dict[str, dict[str, Any]], clip: dict[str, Any]) -> str:
    limit = names[LIMIT]["fps"]
    full = names.get(full_decoding(clip))
    rows = []
    for name, cell in names.items():
        wall = "-" if cell["wall_s"] is None else f"{cell['wall_s']:.1f} s"
        rows.append([label(name, clip), f"{cell['fps']:,.0f}", f"{cell['fps'] / limit:.2f}",
                     f"{cell['seconds']:.2f} s", wall, _rows_cell(name, cell, full)])
    return markdown_table(["what", "frames/s", "x decode limit", "time in run", "whole command",
                           "rows vs `predict` openvino"], rows)


def checks(table: dict[str, dict[str, dict[str, Any]]], clips: dict[str, dict[str, Any]]) -> list[str]:
    """The issue-23 targets these rows decide, per clip, each with its figures."""
    out = []
    for size, names in table.items():
        clip, limit = clips[size], names[LIMIT]["fps"]
        single = names["predict-openvino"]
        out.append(f"{size}: `predict` openvino end to end {single['fps']:,.0f} frames/s = "
                   f"{single['fps'] / limit:.2f} x the decode limit {limit:,.0f} (target >= 0.85)")
        decode_s = clip["frames"] / limit
        plain = names["plain"]
        out.append(f"{size}: the whole `predict --backend openvino` command {single['wall_s']:.1f} s; decode time "
                   f"{decode_s:.1f} s + {STARTUP_ALLOWANCE_S:g} s = {decode_s + STARTUP_ALLOWANCE_S:.1f} s (target <=: "
                   f"{'met' if single['wall_s'] <= decode_s + STARTUP_ALLOWANCE_S else '**missed**'}); the plain "
                   f"script {plain['wall_s']:.1f} s (target <=: "
                   f"{'met' if single['wall_s'] <= plain['wall_s'] else '**missed**'})")
        scrape = names["scrape-3"]
        ratio = scrape["fps"] / single["fps"]
        out.append(f"{size}: `scrape` with 3 tasks {scrape['fps']:,.0f} frames/s = {ratio:.2f} x single-task "
                   f"`predict` (target >= 0.8; {3 * ratio:.2f} x three separate predicts); each task's columns "
                   f"equal its own `predict` rows: {_yes(scrape['same_rows'])}")
        base = ffmpeg_row(names)
        two = names.get("decoders-2")
        if two is not None:
            same = all(c["same_rows"] for n, c in names.items() if n.startswith(("decoders-", "ffmpeg-")))
            out.append(f"{size}: `--decoders 2` {two['fps']:,.0f} frames/s = {two['fps'] / names[base]['fps']:.2f} x "
                       f"FFmpeg's threading ({label(base, clip)}: {names[base]['fps']:,.0f}; target >= 0.95); rows "
                       f"identical for every N: {_yes(same)}")
        cache, build = names["cache-predict"], names["cache-build"]
        out.append(f"{size}: `predict` on the cache {cache['fps']:,.0f} frames/s = {cache['fps'] / limit:.1f} x the "
                   f"decode limit (target >= 10); same rows: {_yes(cache['same_rows'])}; built in "
                   f"{build['seconds']:.1f} s ({build['fps']:,.0f} frames/s)")
        full = names[full_decoding(clip)]
        for lever in LEVERS:
            cell = names[lever]
            out.append(f"{size}: {LABELS[lever].split(' (')[0]}: {cell['fps'] / full['fps']:.2f} x the frames/s of "
                       f"full decoding ({cell['fps']:,.0f} vs {full['fps']:,.0f}); {cell['agreement']:.1%} of rows "
                       f"with full decoding's label; decoded {cell['decoded']:,.0f} of {cell['frames']:,} frames")
    return out


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def machine_lines(machine: dict[str, Any]) -> list[str]:
    load = machine.get("load_start") or []
    end = machine.get("load_end")
    text = f"CPU: {machine.get('cpu')}, {machine.get('cpus')} CPUs; load average {', '.join(f'{v:.2f}' for v in load)}"
    if end:
        text += f" at the start, {', '.join(f'{v:.2f}' for v in end)} at the end"
    return [text]


def markdown(table: dict[str, dict[str, dict[str, Any]]], settings: dict[str, Any],
             machine: dict[str, Any]) -> tuple[str, list[str]]:
    """The Markdown of a run (intro, one table per clip, the checks) and the checks alone."""
    clips = {c["size"]: c for c in settings["clips"]}
    describe = "; ".join(f"{c['size']}, {c['frames']:,} frames, {c['bitrate']}bit/s ({c['bytes'] / 1e6:.1f} MB), "
                         f"crop {c['crops'][0]}" for c in settings["clips"])
    lines = [f"Measured by `benchmarks/video_e2e.py` ({machine_lines(machine)[0]}): {settings['checkpoint']} "
             f"(f = {settings['fold']}, input {settings['input_hw'][0]}x{settings['input_hw'][1]}) on generated "
             f"traffic-like H.264 clips with B-frames (libx264 defaults): {describe}. "
             + (f"Medians of {settings['trials']} interleaved trials." if settings["trials"] > 1 else "One trial.") +
             " \"x decode limit\" divides by PyAV's decode-only rate with FFmpeg's threads; "
             "\"time in run\" is what the run reports (decode to last row, models already loaded); \"whole command\" "
             "is the wall time of the command run as a subprocess (start-up, imports and model compilation "
             "included). `scrape`'s three tasks are the same checkpoint at three crops.", ""]
    for size, names in table.items():
        lines += [f"**{size}**", "", size_table(size, names, clips[size]), ""]
    found = checks(table, clips)
    lines += ["Against the targets of issue 23:", "", *[f"- {c}" for c in found]]
    return "\n".join(lines), found


def replace_marked(document: str, name: str, body: str) -> str:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended when absent)."""
    return replace_section(document, name, body, opening="begin")
