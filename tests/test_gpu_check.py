"""benchmarks/gpu_check.py and its parts (benchmarks/gpucheck/): the plan and budget arithmetic, the report
built from library rows, the full GPU plan against a simulated machine, and (slow) a CPU dry run end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import gpu_check
import pytest
from gpucheck import headline, plan, report, session, steps
from gpucheck.process import Result

from foldedcnns.benchmark.records import CSV_COLUMNS, BenchRecord, write_csv
from foldedcnns.benchmark.summary import best_configs, summarize

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def record(model: str, mode: str, fold: int, batch: int, backend: str, precision: str, throughput: float,
           trial: int = 1, flops_per_image: float = 1e6) -> BenchRecord:
    return BenchRecord(model=model, trial=trial, batch_size=batch, mode=mode, fold=fold, throughput=throughput,
                       flops_per_sec=throughput * flops_per_image, backend=backend, precision=precision,
                       device="cuda:0", images=batch, flops_per_image=flops_per_image)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_interleave_families_alternates_and_keeps_order():
    tasks = [("g1", "game"), ("g2", "game"), ("g3", "game"), ("n1", "noscope"), ("n2", "noscope")]
    assert plan.interleave_families(tasks) == ["g1", "n1", "g2", "n2", "g3"]
    assert plan.interleave_families([]) == []


def test_best_folded_is_the_fastest_fold_of_the_model():
    records = [record("a", "Original", 1, 256, "eager", "fp16", 300.0),
               record("a", "Folded", 2, 256, "eager", "fp16", 400.0),
               record("a", "Folded", 3, 1024, "channels-last", "bf16", 500.0),
               record("b", "Folded", 2, 256, "eager", "fp16", 900.0)]
    top = plan.best_folded(best_configs(records), "a")
    assert (top.fold, top.backend, top.precision, top.batch_size) == (3, "channels-last", "bf16", 1024)
    assert plan.best_folded(best_configs(records[:1]), "a") is None


def test_best_table_picks_best_original_and_folded_per_task():
    records = [
        record("a", "Original", 1, 256, "eager", "fp32", 100.0),
        record("a", "Original", 1, 1024, "cuda-graphs", "fp16", 300.0),
        record("a", "Folded", 2, 1024, "cuda-graphs", "fp16", 450.0),
        record("a", "Folded", 4, 4096, "channels-last", "bf16", 600.0, flops_per_image=2e6),
        record("b", "Original", 1, 256, "eager", "bf16", 50.0),
    ]
    table = report.best_table(records, {"fp16": 1e9, "bf16": 2e9})
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
    assert report.best_table(records, {})[0]["Folded Utilization"] == ""
    assert set(a) == set(b) == set(report.BEST_COLUMNS)


def test_best_table_speedup_is_the_median_over_trials():
    records = [record("a", "Original", 1, 8, "eager", "fp32", t, trial=i) for i, t in enumerate([10.0, 30.0, 20.0], 1)]
    records += [record("a", "Folded", 2, 8, "eager", "fp32", t, trial=i) for i, t in enumerate([20.0, 30.0, 50.0], 1)]
    (row,) = report.best_table(records, {})
    assert row["Original Throughput"] == "20.0" and row["Folded Throughput"] == "30.0"
    assert float(row["Speedup"]) == pytest.approx(2.0)  # per-trial ratios 2.0, 1.0, 2.5


def test_next_batch_doubles_only_while_throughput_grows():
    assert plan.next_batch({256: 100.0, 1024: 200.0, 4096: 300.0}, max_batch=65536) == 8192
    assert plan.next_batch({256: 100.0, 1024: 200.0, 4096: 204.0}, max_batch=65536) is None  # < 5 % more
    assert plan.next_batch({1024: 200.0, 4096: 300.0}, max_batch=4096) is None  # cap
    assert plan.next_batch({4096: 300.0}, max_batch=65536) is None  # nothing to compare with


def test_throughput_by_batch_selects_one_line():
    records = [record("a", "Folded", 2, b, "eager", "fp16", float(b)) for b in (256, 1024)]
    records += [record("a", "Folded", 2, 4096, "compile", "fp16", 1.0),
                record("a", "Original", 1, 256, "eager", "fp16", 9.0)]
    rows = summarize(records)
    assert plan.throughput_by_batch(rows, model="a", backend="eager", precision="fp16", fold=2) == {
        256: 256.0, 1024: 1024.0}
    assert plan.throughput_by_batch(rows, model="a", backend="eager", precision="fp16", fold=1) == {256: 9.0}


def test_refit_seconds_fits_the_budget_within_the_plan_bounds():
    full = plan.make_plan("cuda", quick=False)
    low, high = full.seconds
    assert plan.refit_seconds(1e6, 10, 5.0, 72, full) == high
    assert plan.refit_seconds(10.0, 10, 5.0, 72, full) == low
    mid = plan.refit_seconds(10 * (5.0 + 72 * 3 * 0.07), 10, 5.0, 72, full)
    assert mid == pytest.approx(0.05)
    assert plan.bench_cost(72, 3, 0.05, full) < plan.bench_cost(72, 3, 0.1, full) < plan.bench_cost(72, 3, 0.1,
                                                                                                    full, 1)


def test_plans():
    quick_cpu, full = plan.make_plan("cpu", quick=True), plan.make_plan("cuda", quick=False)
    assert quick_cpu.trials == 1 and quick_cpu.max_tasks == 2 and max(quick_cpu.batch_sizes) <= 64
    assert full.folds == (1, 2, 3, 4) and full.batch_sizes == (256, 1024, 4096)
    assert set(full.backends) == {"eager", "channels-last", "cuda-graphs"} and full.precisions == ("fp16", "bf16")


def test_pytest_counts_and_junit_counts(tmp_path: Path):
    assert steps.pytest_counts("....\n3 passed, 2 skipped, 1 error in 4.2s\n") == {"passed": 3, "skipped": 2,
                                                                                   "errors": 1}
    assert steps.pytest_counts("=== 20 skipped in 1.0s ===") == {"skipped": 20}
    assert steps.pytest_counts("nothing here") == {}
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="7" failures="1" errors="0" skipped="2">'
                   "</testsuite></testsuites>", encoding="utf-8")
    assert steps.junit_counts(xml) == {"passed": 4, "failed": 1, "errors": 0, "skipped": 2}
    assert steps.junit_counts(tmp_path / "missing.xml") == {}


def test_records_of_reads_the_bench_json_records():
    records = [record("a", "Folded", 2, 8, "eager", "bf16", 12.5)]
    bench_json = json.loads(json.dumps({"records": [asdict(r) for r in records], "notices": [], "summary": [],
                                        "best": []}))
    assert headline.records_of(bench_json) == records
    bench_json["records"][0]["a_field_added_later"] = 3  # ignored, so a newer bench still reads
    assert headline.records_of(bench_json) == records
    assert headline.records_of({"records": []}) is None and headline.records_of(["not", "a", "report"]) is None


def test_summary_markdown_has_a_row_per_task_and_the_steps():
    records = [record("a", "Original", 1, 256, "eager", "fp16", 100.0),
               record("a", "Folded", 2, 256, "eager", "fp16", 150.0)]
    best = report.best_table(records, {"fp16": 1e9})
    state = {"status": "ok", "device": "cuda", "versions": {"gpu_name": "NVIDIA H200", "torch": "2.11.0"},
             "steps": [{"name": "pytest", "status": "ok", "seconds": 3.0, "detail": "20 passed"},
                       {"name": "train", "status": "failed", "seconds": 1.0, "detail": "exit 1: a|b\nc"}],
             "peaks": {"fp16": 1e15}, "budget_s": 480, "elapsed_s": 100}
    text = report.summary_markdown(state, best)
    assert "| a | 100 | eager fp16 B=256 | 150 | 2 | eager fp16 B=256 | 1.50x | 15.0% | 10.0% |" in text
    assert "| pytest | ok | 3.0 | 20 passed |" in text and "NVIDIA H200" in text and "1000.00" in text
    assert "| train | failed | 1.0 | exit 1: a\\|b c |" in text  # a detail cannot break the table
    assert "No benchmark records yet." in report.summary_markdown({"steps": []}, [])


def test_parse_args_checks_device_and_budget():
    assert gpu_check.parse_args(["--out", "x"]).device == "cuda"
    assert gpu_check.parse_args(["--out", "x"]).budget_s == 480
    assert gpu_check.parse_args(["--out", "x", "--quick"]).budget_s == 110
    assert gpu_check.parse_args(["--out", "x", "--device", "cuda:1", "--skip", "pytest", "train"]).skip == [
        "pytest", "train"]
    for bad in (["--device", "tpu"], ["--budget-s", "1"], ["--skip", "versions"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(["--out", "x", *bad])


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
    assert list(bench[0]) == list(CSV_COLUMNS)  # the foldedcnns bench CSV format
    assert {r["Model"] for r in bench} == set(tasks)
    assert {r["Mode"] for r in bench} == {"Original", "Folded"} and "cuda-graphs" not in {r["Backend"] for r in bench}
    assert "fp32" in {r["Precision"] for r in bench if r["Mode"] == "Original"}
    best = read_csv(out / "best.csv")
    assert [b["Task"] for b in best] == tasks and list(best[0]) == list(report.BEST_COLUMNS)
    assert all(float(b["Original Throughput"]) > 0 and float(b["Folded Throughput"]) > 0 and b["Speedup"]
               and b["Folded Utilization"] for b in best)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# GPU check: ok")
    assert all(f"| {t} |" in summary for t in tasks)
    predictions = read_csv(out / "predict.csv")
    assert [int(p["frame"]) for p in predictions] == list(range(steps.VIDEO_FRAMES))


# ---------------------------------------------------------------- the full GPU plan against a simulated machine

TASKS = [("apex/a", "game"), ("lol/b", "game"), ("lol/c", "game"), ("lol/d", "game"), ("noscope/e", "noscope"),
         ("noscope/f", "noscope"), ("noscope/g", "noscope"), ("noscope/h", "noscope"), ("sot/i", "game"),
         ("sot/j", "game")]
BACKEND_SPEED = {"eager": 1.0, "channels-last": 1.1, "cuda-graphs": 1.5, "compile": 1.6}
PRECISION_SPEED = {"fp32": 0.5, "fp16": 1.2, "bf16": 1.15}


class SimulatedGpu:
    """Stands in for process.execute: answers each command as the GPU machine would, and advances a fake
    clock by what the command would cost there (bench: start-up, set-up, timed trials, compiles)."""

    def __init__(self, fail_task: str | None = None, plain_output: bool = False) -> None:
        self.now = 0.0
        self.fail_task = fail_task
        self.plain_output = plain_output  # bench prints something other than its JSON report
        self.commands: list[list[str]] = []

    def clock(self) -> float:
        return self.now

    def execute(self, argv, *, timeout, env, cwd) -> Result:  # same contract as process.execute
        self.commands.append(list(argv))
        cost, rc, out = self.answer(list(argv))
        if cost > timeout:
            self.now += timeout
            return Result(None, "", "", timeout)
        self.now += cost
        return Result(rc, out, "" if rc == 0 else "foldedcnns: error: simulated failure", cost)

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
        assert "--json" in args
        if self.fail_task in tasks:
            return 3.0, 1, ""
        records = [record(t, "Original" if f == 1 else "Folded", f, b, be, p,
                          1e6 * BACKEND_SPEED[be] * PRECISION_SPEED[p] * (1 + 0.4 * (f - 1)) * b / (b + 1000), trial=k)
                   for t in tasks for b in batches for be in backends for p in precisions for f in folds
                   for k in range(1, trials + 1)]
        write_csv(values("--out")[0], records)
        n = len(records) // trials
        compiles = n if backends == ["compile"] else 0
        cost = 6.0 + 0.15 * n + 30.0 * compiles + len(records) * (seconds + 0.03)
        if self.plain_output:
            return cost, 0, "model  mode  f ...\n"
        best = [b.to_dict() for b in best_configs(records)]
        return cost, 0, json.dumps({"records": [asdict(r) for r in records], "notices": [], "best": best})


def simulate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: float, fail_task: str | None = None,
             plain_output: bool = False):
    gpu = SimulatedGpu(fail_task, plain_output)
    monkeypatch.setattr(steps.shutil, "which", lambda name: None)  # no nvidia-smi
    args = gpu_check.parse_args(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                 "--budget-s", str(budget), "--skip", "pytest", "train", "predict"])
    rc = gpu_check.run_check(session.Session(args, clock=gpu.clock, execute=gpu.execute))
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
    assert len(read_csv(tmp_path / "out" / "bench.csv")) > 0
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
    (step,) = [s for s in state["steps"] if s["name"] == "headline"]
    assert step["status"] == "failed" and "core lol/b: exit 1" in step["detail"]
    best = read_csv(tmp_path / "out" / "best.csv")
    assert "lol/b" not in {b["Task"] for b in best} and len(best) == 9


def test_bench_records_fall_back_to_its_csv_when_the_json_is_not_there(tmp_path, monkeypatch):
    rc, state, _ = simulate(tmp_path, monkeypatch, 150, plain_output=True)
    assert rc == 0 and state["status"] == "ok"
    measured = [s["tasks"][0] for s in stages(state, "core")]
    best = read_csv(tmp_path / "out" / "best.csv")
    assert measured and [b["Task"] for b in best] == measured and all(b["Speedup"] for b in best)
