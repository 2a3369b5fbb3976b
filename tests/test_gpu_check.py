"""benchmarks/gpu_check.py: its pure helpers, and (slow) a CPU dry run end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gc = load_script()


def row(model: str, mode: str, fold: int, batch: int, backend: str, precision: str, throughput: float,
        trial: int = 1, flops_per_image: float = 1e6) -> dict[str, str]:
    return {"Model": model, "Trial": str(trial), "Batch Size": str(batch), "Mode": mode, "Fold": str(fold),
            "Throughput": str(throughput), "FLOPs/sec": str(throughput * flops_per_image), "TputNorm": "",
            "FLOPNorm": "", "Backend": backend, "Precision": precision, "Device": "cuda:0", "Utilization": "",
            "Images": str(batch)}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_median():
    assert gc.median([3.0, 1.0, 2.0]) == 2.0
    assert gc.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        gc.median([])


def test_interleave_families_alternates_and_keeps_order():
    tasks = [("g1", "game"), ("g2", "game"), ("g3", "game"), ("n1", "noscope"), ("n2", "noscope")]
    assert gc.interleave_families(tasks) == ["g1", "n1", "g2", "n2", "g3"]
    assert gc.interleave_families([]) == []


def test_medians_take_the_median_over_trials():
    rows = [row("a", "Folded", 2, 256, "eager", "fp16", t, trial=i) for i, t in enumerate([10.0, 30.0, 20.0], 1)]
    (config,) = gc.medians(rows)
    assert (config.model, config.fold, config.trials, config.throughput) == ("a", 2, 3, 20.0)
    assert config.flops_per_sec == pytest.approx(20.0 * 1e6)


def test_best_table_picks_best_original_and_folded_per_task():
    rows = [
        row("a", "Original", 1, 256, "eager", "fp32", 100.0),
        row("a", "Original", 1, 1024, "cuda-graphs", "fp16", 300.0),
        row("a", "Folded", 2, 1024, "cuda-graphs", "fp16", 450.0),
        row("a", "Folded", 4, 4096, "channels-last", "bf16", 600.0, flops_per_image=2e6),
        row("b", "Original", 1, 256, "eager", "bf16", 50.0),
    ]
    table = gc.best_table(rows, {"fp16": 1e9, "bf16": 2e9})
    assert [t["Task"] for t in table] == ["a", "b"]
    a, b = table
    assert (a["Original Backend"], a["Original Precision"], a["Original Batch"]) == ("cuda-graphs", "fp16", "1024")
    assert (a["Folded Fold"], a["Folded Backend"], a["Folded Precision"], a["Folded Batch"]) == (
        "4", "channels-last", "bf16", "4096")
    assert float(a["Speedup"]) == pytest.approx(2.0)
    assert float(a["Folded Utilization"]) == pytest.approx(600.0 * 2e6 / 2e9)
    assert float(a["Original Utilization"]) == pytest.approx(300.0 * 1e6 / 1e9)
    # a task with only an original: folded cells and speedup empty; no fp32 peak: utilization empty
    assert b["Folded Throughput"] == b["Speedup"] == "" and b["Original Throughput"] == "50.0"
    assert gc.best_table(rows, {})[0]["Folded Utilization"] == ""
    assert set(a) == set(gc.BEST_COLUMNS)


def test_next_batch_doubles_only_while_throughput_grows():
    assert gc.next_batch({256: 100.0, 1024: 200.0, 4096: 300.0}, max_batch=65536) == 8192
    assert gc.next_batch({256: 100.0, 1024: 200.0, 4096: 204.0}, max_batch=65536) is None  # < 5 % more
    assert gc.next_batch({1024: 200.0, 4096: 300.0}, max_batch=4096) is None  # cap
    assert gc.next_batch({4096: 300.0}, max_batch=65536) is None  # nothing to compare with


def test_throughput_by_batch_selects_one_line():
    rows = [row("a", "Folded", 2, b, "eager", "fp16", float(b)) for b in (256, 1024)]
    rows += [row("a", "Folded", 2, 4096, "compile", "fp16", 1.0), row("a", "Original", 1, 256, "eager", "fp16", 9.0)]
    configs = gc.medians(rows)
    assert gc.throughput_by_batch(configs, model="a", backend="eager", precision="fp16", fold=2) == {
        256: 256.0, 1024: 1024.0}
    assert gc.throughput_by_batch(configs, model="a", backend="eager", precision="fp16", fold=1) == {256: 9.0}


def test_refit_seconds_fits_the_budget_within_the_plan_bounds():
    plan = gc.make_plan("cuda", quick=False)
    low, high = plan.seconds
    assert gc.refit_seconds(1e6, 10, 5.0, 72, plan) == high
    assert gc.refit_seconds(10.0, 10, 5.0, 72, plan) == low
    mid = gc.refit_seconds(10 * (5.0 + 72 * 3 * 0.07), 10, 5.0, 72, plan)
    assert mid == pytest.approx(0.05)
    assert gc.bench_cost(72, 3, 0.05, plan) < gc.bench_cost(72, 3, 0.1, plan) < gc.bench_cost(72, 3, 0.1, plan, 1)


def test_plans():
    quick_cpu, full = gc.make_plan("cpu", quick=True), gc.make_plan("cuda", quick=False)
    assert quick_cpu.trials == 1 and quick_cpu.max_tasks == 2 and max(quick_cpu.batch_sizes) <= 64
    assert full.folds == (1, 2, 3, 4) and full.batch_sizes == (256, 1024, 4096)
    assert set(full.backends) == {"eager", "channels-last", "cuda-graphs"} and full.precisions == ("fp16", "bf16")


def test_pytest_counts_and_junit_counts(tmp_path: Path):
    assert gc.pytest_counts("....\n3 passed, 2 skipped, 1 error in 4.2s\n") == {"passed": 3, "skipped": 2,
                                                                                "errors": 1}
    assert gc.pytest_counts("=== 20 skipped in 1.0s ===") == {"skipped": 20}
    assert gc.pytest_counts("nothing here") == {}
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="7" failures="1" errors="0" skipped="2">'
                   "</testsuite></testsuites>", encoding="utf-8")
    assert gc.junit_counts(xml) == {"passed": 4, "failed": 1, "errors": 0, "skipped": 2}
    assert gc.junit_counts(tmp_path / "missing.xml") == {}


def test_markdown_table_escapes_pipes():
    text = gc.markdown_table(["a", "b"], [("x|y", 1)])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_summary_markdown_has_a_row_per_task_and_the_steps():
    rows = [row("a", "Original", 1, 256, "eager", "fp16", 100.0), row("a", "Folded", 2, 256, "eager", "fp16", 150.0)]
    best = gc.best_table(rows, {"fp16": 1e9})
    state = {"status": "ok", "device": "cuda", "versions": {"gpu_name": "NVIDIA H200", "torch": "2.11.0"},
             "steps": [{"name": "pytest", "status": "ok", "seconds": 3.0, "detail": "20 passed"}],
             "peaks": {"fp16": 1e15}, "budget_s": 480, "elapsed_s": 100}
    text = gc.summary_markdown(state, best)
    assert "| a | 100 | eager fp16 B=256 | 150 | 2 | eager fp16 B=256 | 1.50x | 15.00% | 10.00% |" in text
    assert "| pytest | ok | 3.0 | 20 passed |" in text and "NVIDIA H200" in text and "1000.00" in text
    assert "No benchmark records yet." in gc.summary_markdown({"steps": []}, [])


def test_parse_args_checks_device_and_budget():
    assert gc.parse_args(["--out", "x"]).device == "cuda"
    assert gc.parse_args(["--out", "x"]).budget_s == 480 and gc.parse_args(["--out", "x", "--quick"]).budget_s == 110
    assert gc.parse_args(["--out", "x", "--device", "cuda:1", "--skip", "pytest", "train"]).skip == ["pytest", "train"]
    for bad in (["--device", "tpu"], ["--budget-s", "1"], ["--skip", "versions"]):
        with pytest.raises(SystemExit):
            gc.parse_args(["--out", "x", *bad])


@pytest.mark.slow
def test_cpu_quick_dry_run_end_to_end(tmp_path: Path):
    out = tmp_path / "out"
    # a generous budget: on a busy machine the default (110 s) would cut work, which this test must not see
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--budget-s", "500"], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.csv", "best.csv", "log.txt", "predict.csv", "pytest.txt", "steps.json", "summary.md"]
    state = json.loads((out / "steps.json").read_text(encoding="utf-8"))
    statuses = {s["name"]: s["status"] for s in state["steps"]}
    assert statuses == {"versions": "ok", "peak": "ok", "pytest": "ok", "train": "ok", "predict": "ok",
                        "headline": "ok"}
    tasks = state["tasks"]
    assert len(tasks) == 2 and state["headline"]["not_measured"] == []
    assert any("cuda-graphs" in n for n in state["notices"])  # CUDA-only backend skipped with a notice
    bench = read_csv(out / "bench.csv")
    assert {r["Model"] for r in bench} == set(tasks)
    assert {r["Mode"] for r in bench} == {"Original", "Folded"} and "cuda-graphs" not in {r["Backend"] for r in bench}
    assert "fp32" in {r["Precision"] for r in bench if r["Mode"] == "Original"}
    best = read_csv(out / "best.csv")
    assert [b["Task"] for b in best] == tasks
    assert all(float(b["Original Throughput"]) > 0 and float(b["Folded Throughput"]) > 0 and b["Speedup"]
               and b["Folded Utilization"] for b in best)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# GPU check: ok")
    assert all(f"| {t} |" in summary for t in tasks)
    predictions = read_csv(out / "predict.csv")
    assert [int(p["frame"]) for p in predictions] == list(range(gc.VIDEO_FRAMES))


# ---------------------------------------------------------------- the full GPU plan against a simulated machine

TASKS = [("apex/a", "game"), ("lol/b", "game"), ("lol/c", "game"), ("lol/d", "game"), ("noscope/e", "noscope"),
         ("noscope/f", "noscope"), ("noscope/g", "noscope"), ("noscope/h", "noscope"), ("sot/i", "game"),
         ("sot/j", "game")]
BACKEND_SPEED = {"eager": 1.0, "channels-last": 1.1, "cuda-graphs": 1.5, "compile": 1.6}
PRECISION_SPEED = {"fp32": 0.5, "fp16": 1.2, "bf16": 1.15}


class SimulatedGpu:
    """Stands in for GpuCheck.run: answers each command as the GPU machine would, and advances a fake
    clock by what the command would cost there (bench: start-up, set-up, timed trials, compiles)."""

    def __init__(self, fail_task: str | None = None) -> None:
        self.now = 0.0
        self.fail_task = fail_task
        self.commands: list[list[str]] = []

    def clock(self) -> float:
        return self.now

    def run(self, check, argv, *, limit_s, cwd=None):  # same contract as GpuCheck.run
        self.commands.append(list(argv))
        timeout = min(limit_s, max(1.0, check.remaining()))
        cost, rc, out = self.answer(list(argv))
        if cost > timeout:
            self.now += timeout
            return gc.Result(None, "", "", timeout, budget_cut=timeout < limit_s)
        self.now += cost
        return gc.Result(rc, out, "" if rc == 0 else "foldedcnns: error: simulated failure", cost)

    def answer(self, argv: list[str]) -> tuple[float, int, str]:
        if argv[1] == "-c":
            return 5.0, 0, json.dumps({"foldedcnns": "0.1.0", "torch": "2.11.0", "cuda": "13.0",
                                       "cuda_available": True, "gpu_name": "NVIDIA H200"})
        command, args = argv[3], argv[4:]
        if command == "models":
            return 2.0, 0, json.dumps([{"task": t, "family": f} for t, f in TASKS] + [{"task": "cifar10",
                                                                                        "family": "resnet"}])
        if command == "peak":
            return 10.0, 0, json.dumps([{"precision": p, "flops_per_sec": 5e14} for p in ("fp32", "fp16", "bf16")])
        assert command == "bench", argv
        return self.bench(args)

    def bench(self, args: list[str]) -> tuple[float, int, str]:
        def values(flag: str) -> list[str]:
            i = args.index(flag) + 1
            out = []
            while i < len(args) and not args[i].startswith("--"):
                out += args[i].split(",")
                i += 1
            return out

        tasks, folds = values("--tasks"), [int(f) for f in values("--folds")]
        batches, backends = [int(b) for b in values("--batch-sizes")], values("--backends")
        precisions, trials = values("--precisions"), int(values("--trials")[0])
        seconds = float(values("--seconds")[0])
        if self.fail_task in tasks:
            return 3.0, 1, ""
        rows = [row(t, "Original" if f == 1 else "Folded", f, b, be, p,
                    1e6 * BACKEND_SPEED[be] * PRECISION_SPEED[p] * (1 + 0.4 * (f - 1)) * b / (b + 1000), trial=k)
                for t in tasks for b in batches for be in backends for p in precisions for f in folds
                for k in range(1, trials + 1)]
        gc.write_csv_rows(Path(values("--out")[0]), gc.BENCH_COLUMNS, rows)
        n = len(rows) // trials
        compiles = n if backends == ["compile"] else 0
        cost = 6.0 + 0.15 * n + 30.0 * compiles + len(rows) * (seconds + 0.03)
        return cost, 0, json.dumps({"records": [], "notices": []})


def simulate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: float, fail_task: str | None = None):
    gpu = SimulatedGpu(fail_task)
    monkeypatch.setattr(gc, "_now", gpu.clock)
    monkeypatch.setattr(gc.GpuCheck, "run", lambda self, argv, *, limit_s, cwd=None: gpu.run(self, argv,
                                                                                          limit_s=limit_s))
    monkeypatch.setattr(gc.shutil, "which", lambda name: None)  # no nvidia-smi
    args = gc.parse_args(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--budget-s", str(budget),
                          "--skip", "pytest", "train", "predict"])
    rc = gc.GpuCheck(args).main()
    state = json.loads((tmp_path / "out" / "steps.json").read_text(encoding="utf-8"))
    return rc, state, gpu


def stages(state, name: str) -> list[dict]:
    return [s for s in state["headline"]["stages"] if s["stage"] == name]


@pytest.mark.slow
def test_full_plan_fits_the_default_budget_on_a_simulated_gpu(tmp_path, monkeypatch, capsys):
    rc, state, gpu = simulate(tmp_path, monkeypatch, 480)
    assert rc == 0 and state["status"] == "ok"
    assert gpu.now <= 480
    assert state["tasks"][:4] == ["apex/a", "noscope/e", "lol/b", "noscope/f"]  # families interleaved
    core = stages(state, "core")
    assert [s["tasks"][0] for s in core] == state["tasks"] and len(core) == 10
    assert "f=1,2,3,4 eager/channels-last/cuda-graphs fp16/bf16 B=256,1024,4096 trials=3" in core[0]["settings"]
    (fp32,) = stages(state, "fp32 originals")
    assert fp32["tasks"] == state["tasks"] and "f=1 " in fp32["settings"] and " fp32 " in fp32["settings"]
    compiled = stages(state, "compile")
    assert compiled and all("compile fp16 B=4096" in s["settings"] for s in compiled)
    best = read_csv(tmp_path / "out" / "best.csv")
    assert [b["Task"] for b in best] == state["tasks"]
    assert all(b["Folded Fold"] == "4" and float(b["Speedup"]) > 1 for b in best)
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert all(f"| {t} |" in summary for t, _ in TASKS)
    assert "# GPU check: ok" in capsys.readouterr().out  # the summary is printed too


@pytest.mark.slow
def test_a_large_budget_also_grows_the_batch(tmp_path, monkeypatch):
    rc, state, _ = simulate(tmp_path, monkeypatch, 3000)
    assert rc == 0
    grown = stages(state, "larger batch")
    assert {s["tasks"][0] for s in grown} == {t for t, _ in TASKS}
    batches = {int(s["settings"].split("B=")[1].split()[0]) for s in grown}
    assert batches == {8192, 16384, 32768}  # stops once the doubling gains less than 5 %
    assert len(stages(state, "compile")) == 10 and state["headline"]["not_measured"] == []


def test_a_small_budget_measures_fewer_tasks_without_failing(tmp_path, monkeypatch):
    rc, state, gpu = simulate(tmp_path, monkeypatch, 150)
    assert rc == 0 and gpu.now <= 150
    measured = [s["tasks"][0] for s in stages(state, "core")]
    assert 1 <= len(measured) < 10
    assert state["headline"]["not_measured"] == state["tasks"][len(measured):]
    assert any("not measured" in n for n in state["notices"])


def test_a_failed_bench_fails_the_step_but_the_summary_has_the_rest(tmp_path, monkeypatch):
    rc, state, _ = simulate(tmp_path, monkeypatch, 480, fail_task="lol/b")
    assert rc == 1 and state["status"] == "FAILED"
    (headline,) = [s for s in state["steps"] if s["name"] == "headline"]
    assert headline["status"] == "failed" and "core lol/b: exit 1" in headline["detail"]
    best = read_csv(tmp_path / "out" / "best.csv")
    assert "lol/b" not in {b["Task"] for b in best} and len(best) == 9
