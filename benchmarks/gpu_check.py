"""One command for a bare GPU machine: check, test and benchmark foldedcnns there, inside a time budget.

    python3 benchmarks/gpu_check.py --out $OUT/gpu                       # the GPU run (default --budget-s 480)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc   # CPU dry run, ~1 minute

It needs no network and no install: every foldedcnns call is ``python -m foldedcnns.cli.main`` with
``src/`` on ``PYTHONPATH``, and this script itself uses only the standard library (plus OpenCV or
PyAV to write the test video). Steps, in order:

1. ``versions``: Python, torch, CUDA, cuDNN, GPU name, onnxruntime providers, OpenCV/PyAV; the task list
   (``foldedcnns models --json``, families game and noscope).
2. ``peak``: ``foldedcnns peak`` at every precision benchmarked; the ceiling for Utilization.
3. ``pytest``: ``pytest -q -m gpu tests/test_gpu.py``.
4. ``train``: a tiny synthetic set (``foldedcnns data synth``), then a 1-epoch fold-2 run (``--amp`` on CUDA).
5. ``predict``: a generated video through ``foldedcnns predict`` with that checkpoint (eager fp32, and
   cuda-graphs fp16 on CUDA); the CSV must hold one row per frame.
6. ``headline``: ``foldedcnns bench`` once per task (folds 1-4; eager, channels-last, cuda-graphs; fp16
   and bf16; batch 256, 1024, 4096; interleaved trials, medians), then the originals in fp32, then the
   compile backend at each task's best folded precision and batch (folds 1 and the best fold), then
   larger batches while throughput still grows. Each stage takes only what the budget leaves.
7. ``summary``: the files below, rewritten after every step so an interrupted run still leaves them.

It writes at most 8 files to ``--out`` (what a device run brings back): ``summary.md`` (steps, peaks
and the best-original / best-folded table), ``best.csv`` (that table), ``bench.csv`` (every bench
record, the ``foldedcnns bench`` CSV format), ``steps.json`` (versions, per-step status, times,
notices), ``log.txt`` (every command and its output), ``pytest.txt`` and ``predict.csv``. Scratch
(data, run, video, per-task CSVs) goes to ``--work`` (a temporary folder, removed unless
``--keep-work``). Exit status 1 if a step failed (the summary is still written), else 0; steps skipped
for the device or cut by the budget are not failures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FAMILIES = ("game", "noscope")
CUDA_ONLY_BACKENDS = ("cuda-graphs",)
TRAIN_TASK = "lol/goldnumber-fraction"
TRAIN_FOLD = 2
VIDEO_FRAMES, VIDEO_HW = 150, (72, 128)
DEFAULT_BUDGET_S = 480.0
QUICK_BUDGET_S = 110.0  # a dry run stays under 2 minutes even on a busy 2-core machine (work is cut, not failed)
PYTEST_SHARE = 0.4  # the GPU tests may take at most this share of the budget
RESERVE_S = 8.0  # kept back at the end for the summary
CORE_SHARE = 0.7  # of the budget left after the fp32 originals' share
GROWTH = 1.05  # a larger batch is tried while throughput grew by at least this factor
BENCH_COLUMNS = ("Model", "Trial", "Batch Size", "Mode", "Fold", "Throughput", "FLOPs/sec", "TputNorm", "FLOPNorm",
                 "Backend", "Precision", "Device", "Utilization", "Images")
BEST_COLUMNS = ("Task", "Original Throughput", "Original Backend", "Original Precision", "Original Batch",
                "Folded Throughput", "Folded Fold", "Folded Backend", "Folded Precision", "Folded Batch", "Speedup",
                "Folded FLOPs/sec", "Folded Utilization", "Original Utilization")
OPTIONAL_STEPS = ("peak", "pytest", "train", "predict", "headline")
LOG_CHARS = 20_000  # per captured stream in log.txt


def _now() -> float:
    """The budget's clock (a function, so tests can replace it)."""
    return time.monotonic()


@dataclass(frozen=True)
class Plan:
    """What the headline measures; ``full`` on a GPU, ``quick`` for a dry run."""

    folds: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    trials: int
    seconds: tuple[float, float]  # (least, most) timed seconds per configuration and trial
    max_tasks: int | None
    compile_tasks: int | None
    max_batch: int
    max_grow_steps: int
    pytest_timeout_s: float
    # cost model for the budget (seconds): per bench process, per configuration prepared, per compile
    start_s: float
    prepare_s: float
    compile_s: float


def make_plan(device: str, quick: bool) -> Plan:
    cuda = device.startswith("cuda")
    if quick:
        return Plan(folds=(1, 2), batch_sizes=(8, 32), backends=("eager", "channels-last", "cuda-graphs"),
                    precisions=("fp16", "bf16") if cuda else ("bf16",), trials=1, seconds=(0.05, 0.05),
                    max_tasks=2, compile_tasks=1, max_batch=64, max_grow_steps=1, pytest_timeout_s=300,
                    start_s=5.0, prepare_s=0.2, compile_s=25.0 if cuda else 12.0)
    return Plan(folds=(1, 2, 3, 4), batch_sizes=(256, 1024, 4096), backends=("eager", "channels-last", "cuda-graphs"),
                precisions=("fp16", "bf16"), trials=3, seconds=(0.02, 0.1), max_tasks=None, compile_tasks=None,
                max_batch=65536, max_grow_steps=4, pytest_timeout_s=300,
                start_s=8.0 if cuda else 5.0, prepare_s=0.25, compile_s=20.0 if cuda else 12.0)


# ---------------------------------------------------------------- pure helpers (unit-tested)

def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def interleave_families(tasks: Sequence[tuple[str, str]]) -> list[str]:
    """Task names ``[(name, family), ...]`` taken round-robin over families, so a budget cut keeps both."""
    groups: dict[str, list[str]] = {}
    for name, family in tasks:
        groups.setdefault(family, []).append(name)
    out: list[str] = []
    while any(groups.values()):
        for names in groups.values():
            if names:
                out.append(names.pop(0))
    return out


def config_key(row: Mapping[str, str]) -> tuple[str, str, int, int, str, str, str]:
    return (row["Model"], row["Mode"], int(row["Fold"]), int(row["Batch Size"]), row["Backend"], row["Precision"],
            row["Device"])


@dataclass(frozen=True)
class Config:
    """One configuration, medians over its trials."""

    model: str
    mode: str
    fold: int
    batch_size: int
    backend: str
    precision: str
    device: str
    trials: int
    throughput: float
    flops_per_sec: float

    def describe(self) -> str:
        return f"{self.backend} {self.precision} B={self.batch_size}"


def medians(rows: Iterable[Mapping[str, str]]) -> list[Config]:
    """Bench CSV rows -> one :class:`Config` per configuration (median throughput and FLOPs/sec over trials)."""
    groups: dict[tuple[str, str, int, int, str, str, str], list[Mapping[str, str]]] = {}
    for row in rows:
        groups.setdefault(config_key(row), []).append(row)
    return [Config(*key, trials=len(g), throughput=median([float(r["Throughput"]) for r in g]),
                   flops_per_sec=median([float(r["FLOPs/sec"]) for r in g])) for key, g in groups.items()]


def best_of(configs: Iterable[Config], *, model: str, folded: bool) -> Config | None:
    """The fastest Original (``folded=False``) or Folded configuration of ``model``, or None."""
    mode = "Folded" if folded else "Original"
    kept = [c for c in configs if c.model == model and c.mode == mode]
    return max(kept, key=lambda c: c.throughput, default=None)


def _columns(prefix: str, c: Config | None, peaks: Mapping[str, float]) -> dict[str, str]:
    peak = peaks.get(c.precision) if c else None
    cols = {f"{prefix} Throughput": f"{c.throughput:.1f}" if c else "", f"{prefix} Backend": c.backend if c else "",
            f"{prefix} Precision": c.precision if c else "", f"{prefix} Batch": str(c.batch_size) if c else "",
            f"{prefix} Utilization": f"{c.flops_per_sec / peak:.4f}" if c and peak else ""}
    if prefix == "Folded":
        cols["Folded Fold"] = str(c.fold) if c else ""
        cols["Folded FLOPs/sec"] = f"{c.flops_per_sec:.4g}" if c else ""
    return cols


def best_table(rows: Iterable[Mapping[str, str]], peaks: Mapping[str, float]) -> list[dict[str, str]]:
    """Per task (first-seen order): best original and best folded configuration over any backend,
    precision and batch size, their speedup, and Utilization (FLOPs/sec over ``peaks[precision]``)."""
    configs = medians(rows)
    out = []
    for model in dict.fromkeys(c.model for c in configs):
        orig, fold = best_of(configs, model=model, folded=False), best_of(configs, model=model, folded=True)
        speedup = f"{fold.throughput / orig.throughput:.3f}" if orig and fold and orig.throughput > 0 else ""
        out.append({"Task": model, **_columns("Original", orig, peaks), **_columns("Folded", fold, peaks),
                    "Speedup": speedup})
    return out


def throughput_by_batch(configs: Iterable[Config], *, model: str, backend: str, precision: str,
                        fold: int) -> dict[int, float]:
    """Median throughput per batch size of one model, backend, precision and fold."""
    mode = "Original" if fold == 1 else "Folded"
    return {c.batch_size: c.throughput for c in configs if (c.model, c.mode, c.fold, c.backend, c.precision)
            == (model, mode, fold, backend, precision)}


def next_batch(by_batch: Mapping[int, float], *, growth: float = GROWTH, max_batch: int) -> int | None:
    """Twice the largest batch measured if throughput still grew by ``growth`` over the one before, else None."""
    sizes = sorted(by_batch)
    if len(sizes) < 2 or sizes[-1] * 2 > max_batch:
        return None
    last, before = by_batch[sizes[-1]], by_batch[sizes[-2]]
    return sizes[-1] * 2 if before > 0 and last >= growth * before else None


def bench_cost(n_configs: int, trials: int, seconds: float, plan: Plan, compiles: int = 0) -> float:
    """Estimated wall seconds of one ``foldedcnns bench`` process."""
    warm = 0.02  # the untimed calls of each timed block
    return plan.start_s + n_configs * plan.prepare_s + compiles * plan.compile_s + n_configs * trials * (seconds + warm)


def refit_seconds(available_s: float, n_processes: int, fixed_s: float, n_configs: int, plan: Plan) -> float:
    """Like :func:`choose_seconds`, with the measured set-up seconds ``fixed_s`` of one bench call."""
    low, high = plan.seconds
    if n_processes <= 0 or n_configs <= 0:
        return high
    return min(high, max(low, (available_s / n_processes - fixed_s) / (n_configs * plan.trials) - 0.02))


PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_counts(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line ('3 passed, 2 skipped in 1.0s')."""
    lines = [line for line in text.strip().splitlines() if PYTEST_COUNT.search(line)]
    if not lines:
        return {}
    counts = {}
    for number, word in PYTEST_COUNT.findall(lines[-1]):
        counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def junit_counts(path: Path) -> dict[str, int]:
    """passed/failed/errors/skipped from a pytest ``--junitxml`` file ({} when it is missing or unreadable)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(value: str | float, unit: str = "") -> str:
    """'123456.7' -> '123,457'; empty stays empty."""
    if value in ("", None):
        return ""
    return f"{float(value):,.0f}{unit}"


def _config_text(best: Mapping[str, str], prefix: str) -> str:
    if not best.get(f"{prefix} Batch"):
        return ""
    return f"{best[prefix + ' Backend']} {best[prefix + ' Precision']} B={best[prefix + ' Batch']}"


def summary_markdown(state: Mapping[str, Any], best: Sequence[Mapping[str, str]]) -> str:
    """The Markdown report: machine, steps, peaks, best-original vs best-folded per task."""
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
                                [(s["name"], s["status"], f"{s['seconds']:.1f}", s["detail"])
                                 for s in state.get("steps", [])]))
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
              f"{float(b['Speedup']):.2f}x" if b["Speedup"] else "",
              f"{100 * float(b['Folded Utilization']):.2f}%" if b["Folded Utilization"] else "",
              f"{100 * float(b['Original Utilization']):.2f}%" if b["Original Utilization"] else "")
             for b in best]))
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


def read_bench_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv_rows(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the run

@dataclass
class Step:
    name: str
    status: str = "running"  # ok, failed, skipped, budget
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    rc: int | None  # None: killed at its timeout
    stdout: str
    stderr: str
    seconds: float
    budget_cut: bool = False  # the timeout came from the budget, not from the step's own limit

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        if self.rc is None:
            return f"timed out after {self.seconds:.0f} s" + (" (budget)" if self.budget_cut else "")
        lines = [line for line in (self.stderr or self.stdout).strip().splitlines() if line.strip()]
        return f"exit {self.rc}: {lines[-1][:300] if lines else 'no output'}"


VERSIONS_SCRIPT = r"""
import importlib, json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               cudnn=str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu_name=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                   bf16_supported=torch.cuda.is_bf16_supported())
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
for name in ("numpy", "onnx", "onnxruntime", "cv2", "av", "triton"):
    try:
        out[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception:
        out[name] = None
try:
    import onnxruntime
    out["onnxruntime_providers"] = onnxruntime.get_available_providers()
except Exception:
    pass
try:
    import foldedcnns
    from foldedcnns.runtime import BACKENDS
    out["foldedcnns"] = foldedcnns.__version__
    out["foldedcnns_path"] = foldedcnns.__file__
    out["backends"] = list(BACKENDS)
except Exception as exc:
    out["foldedcnns_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


class GpuCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.plan = make_plan(args.device, args.quick)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = _now()
        self.budget_s = float(args.budget_s)
        self.steps: list[Step] = []
        self.notices: list[str] = []
        self.versions: dict[str, Any] = {}
        self.tasks: list[str] = []
        self.peaks: dict[str, float] = {}
        self.headline: dict[str, Any] = {"stages": [], "not_measured": []}
        self.checkpoint: Path | None = None
        self.core_seconds = self.plan.seconds[1]
        self.bench_csvs: list[Path] = []
        self.bench_calls = 0
        self.gpu_state: list[dict[str, Any]] = []
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.log = self.out / "log.txt"
        self.log.write_text(f"gpu_check started {self.started}: {' '.join(sys.argv)}\n", encoding="utf-8")

    # ---- time and processes

    def elapsed(self) -> float:
        return _now() - self.t0

    def remaining(self) -> float:
        return self.budget_s - self.elapsed() - RESERVE_S

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            print(f"notice: {text}", file=sys.stderr, flush=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def run(self, argv: Sequence[str], *, limit_s: float, cwd: Path | None = None) -> Result:
        """Run a command with a timeout of ``limit_s`` cut to the budget left; log it."""
        timeout = min(limit_s, max(1.0, self.remaining()))
        start = _now()
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(argv)}  # timeout {timeout:.0f} s\n")
        # its own process group, so a timeout also ends what it started (e.g. inductor's compile workers)
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(),
                                cwd=cwd or ROOT, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            result = Result(proc.returncode, stdout, stderr, _now() - start)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            try:
                stdout, stderr = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # a grandchild outside the group still holds the pipes
                stdout, stderr = "", ""
            result = Result(None, stdout or "", stderr or "", _now() - start, budget_cut=timeout < limit_s)
        except BaseException:  # Ctrl-C or a kill of this script: do not leave the child running
            kill_group(proc)
            raise
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"# rc={result.rc} in {result.seconds:.1f} s\n")
            for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
                if stream.strip():
                    cut = stream if len(stream) <= LOG_CHARS else "[...]\n" + stream[-LOG_CHARS:]
                    log.write(f"--- {name}\n{cut.rstrip()}\n")
        return result

    def cli(self, *args: str, limit_s: float = 600) -> Result:
        return self.run([sys.executable, "-m", "foldedcnns.cli.main", *args], limit_s=limit_s)

    def json_of(self, result: Result) -> Any:
        try:
            return json.loads(result.stdout)
        except (json.JSONDecodeError, TypeError):
            return None

    # ---- steps

    def step(self, name: str, func: Callable[[Step], None], *, min_s: float = 0.0,
             requires: Callable[[], str | None] | None = None) -> Step:
        """Run one step; a missing requirement or too little budget skips it, an exception fails it."""
        step = Step(name)
        self.steps.append(step)
        start = _now()
        missing = "left out by --skip" if name in self.args.skip else (requires() if requires else None)
        if missing:
            step.status, step.detail = "skipped", missing
        elif self.remaining() < min_s:
            step.status, step.detail = "budget", f"skipped: {self.remaining():.0f} s left, needs about {min_s:.0f} s"
        else:
            print(f"[{self.elapsed():6.1f} s] {name} ...", file=sys.stderr, flush=True)
            try:
                func(step)
                if step.status == "running":
                    step.status = "ok"
            except Exception as exc:  # a bug in this script or an unexpected output: fail the step, go on
                step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"
        step.seconds = _now() - start
        print(f"[{self.elapsed():6.1f} s] {name}: {step.status} {step.detail}", file=sys.stderr, flush=True)
        self.write_summary()
        return step

    def importable(self) -> str | None:
        if not self.versions.get("foldedcnns"):
            return "foldedcnns is not importable (see the versions step)"
        if self.cuda and not self.versions.get("cuda_available"):
            return "CUDA is not available (see the versions step)"
        return None

    def do_versions(self, step: Step) -> None:
        result = self.run([sys.executable, "-c", VERSIONS_SCRIPT], limit_s=120)
        info = self.json_of(result) if result.ok else None
        if not isinstance(info, dict):
            step.status, step.detail = "failed", f"version probe: {result.why()}"
            return
        self.versions = info
        smi = shutil.which("nvidia-smi")
        if smi:
            probe = self.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], limit_s=30)
            if probe.ok and probe.stdout.strip():
                info["nvidia_smi"] = probe.stdout.strip()
                info["driver"] = probe.stdout.strip().splitlines()[0].split(",")[1].strip()
        problems = [info[k] for k in ("torch_error", "foldedcnns_error") if info.get(k)]
        if self.cuda and not info.get("cuda_available"):
            problems.append("torch sees no CUDA device")
        step.data = info
        step.detail = (f"torch {info.get('torch')}, CUDA {info.get('cuda')}, "
                       f"{info.get('gpu_name') or 'no GPU'}, foldedcnns {info.get('foldedcnns')}")
        if problems:
            step.status, step.detail = "failed", "; ".join(problems)
            return
        if self.args.tasks:
            self.tasks = list(self.args.tasks)
        else:
            listed = self.cli("models", "--json", limit_s=120)
            models = self.json_of(listed) if listed.ok else None
            if not isinstance(models, list):
                step.status, step.detail = "failed", f"foldedcnns models --json: {listed.why()}"
                return
            self.tasks = interleave_families([(m["task"], m["family"]) for m in models if m["family"] in FAMILIES])
        if self.plan.max_tasks is not None:
            self.tasks = self.tasks[:self.plan.max_tasks]
        step.data["tasks"] = self.tasks
        step.detail += f"; {len(self.tasks)} tasks"

    def precisions(self) -> list[str]:
        return list(dict.fromkeys(["fp32", *self.plan.precisions]))

    def do_peak(self, step: Step) -> None:
        seconds = "0.2" if self.args.quick else "1.0"
        result = self.cli("peak", "--device", self.device, "--precision", ",".join(self.precisions()),
                          "--seconds", seconds, "--json", limit_s=180)
        peaks = self.json_of(result) if result.ok else None
        if not isinstance(peaks, list) or not peaks:
            step.status, step.detail = "failed", result.why()
            return
        self.peaks = {p["precision"]: float(p["flops_per_sec"]) for p in peaks}
        step.data = {"peaks": peaks}
        step.detail = ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in self.peaks.items())
        if not all(v > 0 for v in self.peaks.values()):
            step.status = "failed"

    def do_pytest(self, step: Step) -> None:
        junit = self.work / "pytest.xml"
        result = self.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-rs",
                           "-p", "no:cacheprovider", f"--junitxml={junit}"],
                          limit_s=min(self.plan.pytest_timeout_s, PYTEST_SHARE * self.budget_s))
        text = result.stdout + ("\n--- stderr\n" + result.stderr if result.stderr else "")
        (self.out / "pytest.txt").write_text(text, encoding="utf-8")
        counts = junit_counts(junit) or pytest_counts(result.stdout)
        step.data = {"counts": counts, "rc": result.rc}
        step.detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or result.why()
        if result.rc != 0:
            step.status = "budget" if result.budget_cut else "failed"
            step.detail += f" ({result.why()})"
        elif self.cuda and counts.get("skipped"):
            self.notice(f"pytest skipped {counts['skipped']} GPU tests on {self.device} (see pytest.txt)")

    def do_train(self, step: Step) -> None:
        data, run = self.work / "data", self.work / "run"
        made = self.cli("data", "synth", TRAIN_TASK, str(data), "--per-class", "20", "--no-progress", "--overwrite",
                        "--json", limit_s=300)
        if not made.ok:
            step.status, step.detail = "failed", f"data synth: {made.why()}"
            return
        device = ["--device", "cuda", "--amp"] if self.cuda else ["--device", "cpu"]
        trained = self.cli("train", TRAIN_TASK, "--data", str(data), "--fold", str(TRAIN_FOLD), "--out", str(run),
                           "--epochs", "1", "--batch-size", "32", "--no-curriculum", *device,
                           "--no-progress", "--json", limit_s=600)
        report = self.json_of(trained) if trained.ok else None
        best = run / "best.pt"
        if not isinstance(report, dict) or not best.is_file():
            step.status = "budget" if trained.budget_cut else "failed"
            step.detail = f"train: {trained.why()}" + ("" if best.is_file() else "; no best.pt")
            return
        self.checkpoint = best
        top1 = (report.get("best") or {}).get("test_top1")
        step.data = {"epochs": report.get("epochs"), "fold": report.get("fold"), "test_top1": top1,
                     "train_seconds": trained.seconds}
        amp = " with AMP" if self.cuda else ""
        step.detail = f"{TRAIN_TASK} f={TRAIN_FOLD}, 1 epoch{amp} in {trained.seconds:.1f} s, wrote best.pt"

    def write_video(self, path: Path) -> int:
        """A small video of random noise blocks; OpenCV (on the GPU machine) or PyAV via foldedcnns."""
        import numpy as np  # the GPU machine and the dev venv both have NumPy

        rng = np.random.default_rng(0)
        h, w = VIDEO_HW
        frames = [np.repeat(np.repeat(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
                  for _ in range(VIDEO_FRAMES)]
        try:
            import cv2
        except ImportError:
            sys.path.insert(0, str(SRC))
            from foldedcnns.data.video import write_video  # needs PyAV

            return write_video(path, frames)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write mp4v video here")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return len(frames)

    def do_predict(self, step: Step) -> None:
        assert self.checkpoint is not None
        video = self.work / "clip.mp4"
        frames = self.write_video(video)
        runs = [("eager", "fp32")] + ([("cuda-graphs", "fp16")] if self.cuda else [])
        problems, details = [], []
        for backend, precision in runs:
            out = self.work / f"predict-{backend}-{precision}.csv"
            result = self.cli("predict", str(self.checkpoint), str(video), "--out", str(out), "--device",
                              "cuda" if self.cuda else "cpu", "--backend", backend, "--precision", precision,
                              "--no-progress", "--json", limit_s=300)
            report = self.json_of(result) if result.ok else None
            if not isinstance(report, dict):
                problems.append(f"{backend} {precision}: {result.why()}")
                continue
            rows = read_bench_csv(out)
            indices = [int(r["frame"]) for r in rows]
            if indices != list(range(frames)):
                problems.append(f"{backend} {precision}: {len(rows)} CSV rows for {frames} frames")
            fps = report.get("end_to_end_fps")
            details.append(f"{backend} {precision}: {len(rows)}/{frames} rows, "
                           f"{fps:,.0f} frames/s end to end" if fps else f"{backend} {precision}: {len(rows)} rows")
            step.data[f"{backend}-{precision}"] = {k: report.get(k) for k in ("frames", "end_to_end_fps", "stages",
                                                                              "efficiency", "errors")}
            if not (self.out / "predict.csv").exists():
                shutil.copyfile(out, self.out / "predict.csv")
        step.detail = "; ".join(problems + details)
        if problems:
            step.status = "failed"

    # ---- headline

    def bench(self, stage: str, tasks: Sequence[str], *, folds: Sequence[int], batch_sizes: Sequence[int],
              backends: Sequence[str], precisions: Sequence[str], seconds: float, limit_s: float,
              failures: list[str]) -> float | None:
        """One ``foldedcnns bench`` call; its CSV joins bench.csv. Returns its wall seconds, or None when it
        failed (added to ``failures``) or was cut by the budget (a notice)."""
        self.bench_calls += 1
        name = f"{stage} {tasks[0]}" if len(tasks) == 1 else stage
        csv_path = self.work / "bench" / f"{self.bench_calls:03d}-{slug(name)}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        result = self.cli("bench", "--tasks", *tasks, "--folds", _join(folds), "--batch-sizes", _join(batch_sizes),
                          "--backends", ",".join(backends), "--precisions", ",".join(precisions),
                          "--device", self.device, "--trials", str(self.plan.trials), "--seconds", f"{seconds:.3f}",
                          "--peak-seconds", "0", "--out", str(csv_path), "--json", limit_s=limit_s)
        report = self.json_of(result) if result.ok else None
        if isinstance(report, dict):
            for text in report.get("notices", []):
                self.notice(text)
        self.stage(stage, tasks, f"f={_join(folds)} {'/'.join(backends)} {'/'.join(precisions)} "
                   f"B={_join(batch_sizes)} trials={self.plan.trials} s={seconds:.3f}", result.seconds)
        if result.ok and csv_path.is_file():
            self.bench_csvs.append(csv_path)
            self.merge_bench()
            return result.seconds
        if result.budget_cut:
            self.notice(f"headline: {name} cut by the budget after {result.seconds:.0f} s")
        else:
            failures.append(f"{name}: {result.why()}")
        return None

    def bench_rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for path in self.bench_csvs:
            rows += read_bench_csv(path)
        return rows

    def merge_bench(self) -> None:
        write_csv_rows(self.out / "bench.csv", BENCH_COLUMNS, self.bench_rows())

    def stage(self, name: str, tasks: Sequence[str], settings: str, seconds: float) -> None:
        self.headline["stages"].append({"stage": name, "tasks": list(tasks), "settings": settings,
                                        "seconds": seconds})

    def do_headline(self, step: Step) -> None:
        plan = self.plan
        backends = list(plan.backends)
        if not self.cuda:
            dropped = [b for b in backends if b in CUDA_ONLY_BACKENDS]
            backends = [b for b in backends if b not in CUDA_ONLY_BACKENDS]
            if dropped:
                self.notice(f"skipped {', '.join(dropped)} on {self.device}: CUDA only")
        failures: list[str] = []
        measured = self.core_stage(backends, failures)
        self.fp32_stage(measured, backends, failures)
        self.compile_stage(measured, failures)
        self.grow_stage(measured, failures)
        rows = self.bench_rows()
        step.data = {"records": len(rows), "tasks_measured": measured, "failures": failures}
        step.detail = f"{len(measured)}/{len(self.tasks)} tasks, {len(rows)} records"
        if failures:
            step.status = "failed"
            step.detail += "; " + "; ".join(failures)
        elif not measured:
            step.status = "budget"

    def core_stage(self, backends: Sequence[str], failures: list[str]) -> list[str]:
        """Every task, one bench call each; the timed seconds are fitted to the budget as it goes."""
        plan = self.plan
        n_core = len(plan.folds) * len(backends) * len(plan.precisions) * len(plan.batch_sizes)
        n_fp32 = len(backends) * len(plan.batch_sizes)
        fixed = plan.start_s + n_core * plan.prepare_s  # set-up of one call; measured after the first
        measured: list[str] = []
        # the core gets CORE_SHARE of what the fp32 originals leave; compile and larger batches the rest.
        # Every task still runs (at the least timed seconds) while the whole budget allows.
        fp32_reserve = bench_cost(n_fp32 * len(self.tasks), plan.trials, plan.seconds[0], plan)
        core_budget, core_start = CORE_SHARE * max(0.0, self.remaining() - fp32_reserve), self.elapsed()
        for i, task in enumerate(self.tasks):
            left = len(self.tasks) - i
            share = core_budget - (self.elapsed() - core_start)
            seconds = refit_seconds(share, left, fixed, n_core, plan)
            cost = fixed + n_core * plan.trials * (seconds + 0.02)
            available = self.remaining() - bench_cost(n_fp32 * left, plan.trials, plan.seconds[0], plan)
            if available < cost:
                self.headline["not_measured"] += self.tasks[i:]
                self.notice(f"headline: budget left for {i} of {len(self.tasks)} tasks; not measured: "
                            f"{', '.join(self.tasks[i:])}")
                break
            spent = self.bench("core", [task], folds=plan.folds, batch_sizes=plan.batch_sizes,
                               backends=backends, precisions=plan.precisions, seconds=seconds,
                               limit_s=max(3 * cost, 120), failures=failures)
            if spent is not None:
                measured.append(task)
                self.core_seconds = seconds
                fixed = max(1.0, spent - n_core * plan.trials * (seconds + 0.02))
        return measured

    def fp32_stage(self, measured: Sequence[str], backends: Sequence[str], failures: list[str]) -> None:
        """The originals in fp32, every measured task in one bench call."""
        plan = self.plan
        if not measured:
            return
        n = len(backends) * len(plan.batch_sizes) * len(measured)
        seconds = self.core_seconds  # as the fp16/bf16 originals were timed, if the budget allows
        while seconds > plan.seconds[0] and self.remaining() < bench_cost(n, plan.trials, seconds, plan):
            seconds = max(plan.seconds[0], seconds / 2)
        cost = bench_cost(n, plan.trials, seconds, plan)
        if self.remaining() < cost:
            self.notice("headline: no budget left for the fp32 originals")
            return
        self.bench("fp32 originals", measured, folds=[1], batch_sizes=plan.batch_sizes, backends=backends,
                   precisions=["fp32"], seconds=seconds, limit_s=max(3 * cost, 120), failures=failures)

    def compile_stage(self, measured: Sequence[str], failures: list[str]) -> None:
        """compile at each task's best folded precision and batch size, for fold 1 and the best fold."""
        plan = self.plan
        tasks = list(measured)[:plan.compile_tasks] if plan.compile_tasks is not None else list(measured)
        configs = medians(self.bench_rows())
        per_compile = plan.compile_s  # measured after the first call
        for i, task in enumerate(tasks):
            best = best_of(configs, model=task, folded=True)
            if best is None:
                continue
            cost = plan.start_s + 2 * per_compile + 2 * plan.trials * (plan.seconds[1] + 0.02)
            if self.remaining() < cost:
                self.notice(f"headline: budget left for compile on {i} of {len(tasks)} tasks; not compiled: "
                            f"{', '.join(tasks[i:])}")
                return
            spent = self.bench("compile", [task], folds=[1, best.fold], batch_sizes=[best.batch_size],
                               backends=["compile"], precisions=[best.precision], seconds=plan.seconds[1],
                               limit_s=max(4 * cost, 180), failures=failures)
            if spent is not None:
                per_compile = max(1.0, (spent - plan.start_s) / 2)

    def grow_stage(self, measured: Sequence[str], failures: list[str]) -> None:
        """Double the batch size of each task's best folded configuration among the core backends (those
        timed at several batch sizes) while throughput still grows; one doubling per task per round."""
        plan = self.plan
        active = list(measured)
        for _ in range(plan.max_grow_steps):
            for task in list(active):
                configs = [c for c in medians(self.bench_rows()) if c.backend in plan.backends]
                best = best_of(configs, model=task, folded=True)
                by_batch = {} if best is None else throughput_by_batch(
                    configs, model=task, backend=best.backend, precision=best.precision, fold=best.fold)
                batch = next_batch(by_batch, max_batch=plan.max_batch)
                if best is None or batch is None:
                    active.remove(task)
                    continue
                folds = [1, best.fold]
                cost = bench_cost(len(folds), plan.trials, self.core_seconds, plan)
                if self.remaining() < cost:
                    self.notice(f"headline: no budget left to try batch {batch} for {task} and later tasks")
                    return
                if self.bench("larger batch", [task], folds=folds, batch_sizes=[batch], backends=[best.backend],
                              precisions=[best.precision], seconds=self.core_seconds, limit_s=max(4 * cost, 120),
                              failures=failures) is None:
                    active.remove(task)

    # ---- summary

    def status(self) -> str:
        if any(s.status == "running" for s in self.steps):
            return "running"
        return "FAILED" if any(s.status == "failed" for s in self.steps) else "ok"

    def write_summary(self) -> None:
        rows = self.bench_rows()
        best = best_table(rows, self.peaks)
        write_csv_rows(self.out / "best.csv", BEST_COLUMNS, best)
        if not (self.out / "bench.csv").exists():
            write_csv_rows(self.out / "bench.csv", BENCH_COLUMNS, rows)
        state = {"status": self.status(), "device": self.device, "quick": self.args.quick,
                 "budget_s": self.budget_s, "elapsed_s": self.elapsed(), "started": self.started,
                 "versions": self.versions, "tasks": self.tasks, "peaks": self.peaks, "plan": asdict(self.plan),
                 "steps": [asdict(s) for s in self.steps], "headline": self.headline, "notices": self.notices,
                 "gpu_state": self.gpu_state, "work": str(self.work)}
        text = json.dumps(state, indent=2, default=str)
        tmp = self.out / "steps.json.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.out / "steps.json")
        tmp = self.out / "summary.md.tmp"
        tmp.write_text(summary_markdown(state, best), encoding="utf-8")
        os.replace(tmp, self.out / "summary.md")

    def snapshot_gpu(self, when: str) -> None:
        smi = shutil.which("nvidia-smi")
        if not (self.cuda and smi):
            return
        probe = self.run([smi, "--query-gpu=utilization.gpu,clocks.sm,temperature.gpu,power.draw,memory.used",
                          "--format=csv,noheader"], limit_s=20)
        if probe.ok:
            self.gpu_state.append({"when": when, "state": probe.stdout.strip()})

    def main(self) -> int:
        need_import = self.importable
        self.step("versions", self.do_versions)
        self.step("peak", self.do_peak, min_s=10, requires=need_import)
        self.step("pytest", self.do_pytest, min_s=30, requires=need_import)
        self.step("train", self.do_train, min_s=20, requires=need_import)
        self.step("predict", self.do_predict, min_s=10,
                  requires=lambda: need_import() or (None if self.checkpoint else "no checkpoint from the train step"))
        self.snapshot_gpu("before headline")
        self.step("headline", self.do_headline, min_s=20,
                  requires=lambda: need_import() or (None if self.tasks else "no tasks"))
        self.snapshot_gpu("after headline")
        self.write_summary()
        if not self.args.keep_work and not self.args.work:
            shutil.rmtree(self.work, ignore_errors=True)
        status = self.status()
        sys.stdout.write((self.out / "summary.md").read_text(encoding="utf-8"))
        print(f"gpu_check: {status} in {self.elapsed():.1f} s; wrote {self.out}/summary.md", file=sys.stderr)
        return 0 if status == "ok" else 1


def kill_group(proc: subprocess.Popen[str]) -> None:
    """End the process group that ``proc`` leads (it was started with ``start_new_session=True``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _join(values: Iterable[int]) -> str:
    return ",".join(map(str, values))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for summary.md, best.csv, bench.csv, steps.json, ...")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny grid: 2 tasks, folds 1-2, tiny batches, 1 trial")
    parser.add_argument("--budget-s", type=float, help=f"wall-clock budget in seconds (default {DEFAULT_BUDGET_S:.0f}, "
                                                       f"with --quick {QUICK_BUDGET_S:.0f})")
    parser.add_argument("--tasks", nargs="+", help="benchmark these tasks instead of every game and NoScope task")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--skip", nargs="+", default=[], choices=OPTIONAL_STEPS, metavar="STEP",
                        help=f"leave out steps, from {', '.join(OPTIONAL_STEPS)} (e.g. on a second run)")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.budget_s is None:
        args.budget_s = QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S
    if args.budget_s <= RESERVE_S:
        parser.error(f"--budget-s must be more than {RESERVE_S:.0f}")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through GpuCheck.run, which ends the running child's group


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    return GpuCheck(args).main()


if __name__ == "__main__":
    raise SystemExit(main())
