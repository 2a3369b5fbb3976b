"""The checks before the headline: versions, peak, pytest, train and predict.

Each ``do_*`` function takes the :class:`~gpucheck.session.Session` and its :class:`~gpucheck.session.Step`,
runs foldedcnns (or pytest) as child processes through ``session.run``/``session.cli``, and fills the
step's status, detail and data.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gpucheck.plan import FAMILIES, PYTEST_SHARE, interleave_families
from gpucheck.session import Session, Step

TRAIN_TASK = "lol/goldnumber-fraction"
TRAIN_FOLD = 2
VIDEO_FRAMES, VIDEO_HW = 150, (72, 128)
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")

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
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file ([] when it is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def do_versions(session: Session, step: Step) -> None:
    """Python, torch, CUDA, GPU, ONNX Runtime and foldedcnns versions; then the task list."""
    result = session.run([sys.executable, "-c", VERSIONS_SCRIPT], limit_s=120)
    info = session.json_of(result)
    if not isinstance(info, dict):
        step.status, step.detail = "failed", f"version probe: {result.why()}"
        return
    session.versions = info
    smi = shutil.which("nvidia-smi")
    if smi:
        probe = session.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                             "--format=csv,noheader"], limit_s=30)
        if probe.ok and probe.stdout.strip():
            info["nvidia_smi"] = probe.stdout.strip()
            info["driver"] = probe.stdout.strip().splitlines()[0].split(",")[1].strip()
    problems = [info[k] for k in ("torch_error", "foldedcnns_error") if info.get(k)]
    if session.cuda and not info.get("cuda_available"):
        problems.append("torch sees no CUDA device")
    step.data = info
    step.detail = (f"torch {info.get('torch')}, CUDA {info.get('cuda')}, "
                   f"{info.get('gpu_name') or 'no GPU'}, foldedcnns {info.get('foldedcnns')}")
    if problems:
        step.status, step.detail = "failed", "; ".join(problems)
        return
    if session.args.tasks:
        session.tasks = list(session.args.tasks)
    else:
        listed = session.cli("models", "--json", limit_s=120)
        models = session.json_of(listed)
        if not isinstance(models, list):
            step.status, step.detail = "failed", f"foldedcnns models --json: {listed.why()}"
            return
        session.tasks = interleave_families([(m["task"], m["family"]) for m in models if m["family"] in FAMILIES])
    if session.plan.max_tasks is not None:
        session.tasks = session.tasks[:session.plan.max_tasks]
    step.data["tasks"] = session.tasks
    step.detail += f"; {len(session.tasks)} tasks"


def precisions(session: Session) -> list[str]:
    """fp32 and every precision the headline measures: the peaks Utilization divides by."""
    return list(dict.fromkeys(["fp32", *session.plan.precisions]))


def do_peak(session: Session, step: Step) -> None:
    """``foldedcnns peak`` at every precision benchmarked: the ceiling for Utilization."""
    seconds = "0.2" if session.args.quick else "1.0"
    result = session.cli("peak", "--device", session.device, "--precision", ",".join(precisions(session)),
                         "--seconds", seconds, "--json", limit_s=180)
    peaks = session.json_of(result)
    if not isinstance(peaks, list) or not peaks:
        step.status, step.detail = "failed", result.why()
        return
    session.peaks = {p["precision"]: float(p["flops_per_sec"]) for p in peaks}
    step.data = {"peaks": peaks}
    step.detail = ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in session.peaks.items())
    if not all(v > 0 for v in session.peaks.values()):
        step.status = "failed"


def do_pytest(session: Session, step: Step) -> None:
    """``pytest -q -m gpu tests/test_gpu.py``, within its share of the budget; its output goes to pytest.txt."""
    junit = session.work / "pytest.xml"
    result = session.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-rs",
                          "-p", "no:cacheprovider", f"--junitxml={junit}"],
                         limit_s=min(session.plan.pytest_timeout_s, PYTEST_SHARE * session.budget_s))
    text = result.stdout + ("\n--- stderr\n" + result.stderr if result.stderr else "")
    (session.out / "pytest.txt").write_text(text, encoding="utf-8")
    counts = junit_counts(junit) or pytest_counts(result.stdout)
    step.data = {"counts": counts, "rc": result.rc}
    step.detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or result.why()
    if result.rc != 0:
        step.status = "budget" if result.budget_cut else "failed"
        step.detail += f" ({result.why()})"
    elif session.cuda and counts.get("skipped"):
        session.notice(f"pytest skipped {counts['skipped']} GPU tests on {session.device} (see pytest.txt)")


def do_train(session: Session, step: Step) -> None:
    """A tiny synthetic set, then a 1-epoch run at fold 2 (with AMP on CUDA); keeps its best.pt for predict."""
    data, run = session.work / "data", session.work / "run"
    made = session.cli("data", "synth", TRAIN_TASK, str(data), "--per-class", "20", "--no-progress", "--overwrite",
                       "--json", limit_s=300)
    if not made.ok:
        step.status, step.detail = "failed", f"data synth: {made.why()}"
        return
    device = ["--device", "cuda", "--amp"] if session.cuda else ["--device", "cpu"]
    trained = session.cli("train", TRAIN_TASK, "--data", str(data), "--fold", str(TRAIN_FOLD), "--out", str(run),
                          "--epochs", "1", "--batch-size", "32", "--no-curriculum", *device,
                          "--no-progress", "--json", limit_s=600)
    report = session.json_of(trained)
    best = run / "best.pt"
    if not isinstance(report, dict) or not best.is_file():
        step.status = "budget" if trained.budget_cut else "failed"
        step.detail = f"train: {trained.why()}" + ("" if best.is_file() else "; no best.pt")
        return
    session.checkpoint = best
    top1 = (report.get("best") or {}).get("test_top1")
    step.data = {"epochs": report.get("epochs"), "fold": report.get("fold"), "test_top1": top1,
                 "train_seconds": trained.seconds}
    amp = " with AMP" if session.cuda else ""
    step.detail = f"{TRAIN_TASK} f={TRAIN_FOLD}, 1 epoch{amp} in {trained.seconds:.1f} s, wrote best.pt"


def write_video(path: Path) -> int:
    """A small video of random noise blocks; OpenCV (on the GPU machine) or PyAV via foldedcnns."""
    import numpy as np  # the GPU machine and the dev venv both have NumPy

    rng = np.random.default_rng(0)
    h, w = VIDEO_HW
    frames = [np.repeat(np.repeat(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
              for _ in range(VIDEO_FRAMES)]
    try:
        import cv2
    except ImportError:
        from foldedcnns.data.video import write_video as write_with_pyav

        return write_with_pyav(path, frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return len(frames)


def do_predict(session: Session, step: Step) -> None:
    """A generated video through ``foldedcnns predict`` (eager fp32; also cuda-graphs fp16 on CUDA); the CSV
    must hold one row per frame. The first run's CSV becomes predict.csv."""
    if session.checkpoint is None:
        raise RuntimeError("no checkpoint from the train step")
    video = session.work / "clip.mp4"
    frames = write_video(video)
    runs = [("eager", "fp32")] + ([("cuda-graphs", "fp16")] if session.cuda else [])
    problems, details = [], []
    for backend, precision in runs:
        out = session.work / f"predict-{backend}-{precision}.csv"
        result = session.cli("predict", str(session.checkpoint), str(video), "--out", str(out), "--device",
                             "cuda" if session.cuda else "cpu", "--backend", backend, "--precision", precision,
                             "--no-progress", "--json", limit_s=300)
        report = session.json_of(result)
        if not isinstance(report, dict):
            problems.append(f"{backend} {precision}: {result.why()}")
            continue
        rows = read_rows(out)
        if [int(r["frame"]) for r in rows] != list(range(frames)):
            problems.append(f"{backend} {precision}: {len(rows)} CSV rows for {frames} frames")
        fps = report.get("end_to_end_fps")
        details.append(f"{backend} {precision}: {len(rows)}/{frames} rows, "
                       f"{fps:,.0f} frames/s end to end" if fps else f"{backend} {precision}: {len(rows)} rows")
        step.data[f"{backend}-{precision}"] = {k: report.get(k) for k in ("frames", "end_to_end_fps", "stages",
                                                                          "efficiency", "errors")}
        if not (session.out / "predict.csv").exists():
            shutil.copyfile(out, session.out / "predict.csv")
    step.detail = "; ".join(problems + details)
    if problems:
        step.status = "failed"


def snapshot_gpu(session: Session, when: str) -> None:
    """nvidia-smi's utilization, clocks, temperature, power and memory, into steps.json (CUDA runs only)."""
    smi = shutil.which("nvidia-smi")
    if not (session.cuda and smi):
        return
    probe = session.run([smi, "--query-gpu=utilization.gpu,clocks.sm,temperature.gpu,power.draw,memory.used",
                         "--format=csv,noheader"], limit_s=20)
    if probe.ok:
        session.gpu_state.append({"when": when, "state": probe.stdout.strip()})

