"""bench, peak and tune end to end, in-process, on a tiny task."""

import csv
import json

import pytest
import torch

from foldedcnns.benchmark.records import CSV_COLUMNS
from foldedcnns.cli.main import main

# One thread: on a busy 2-core machine every two-thread op of a tiny model waits for a time slice.
FAST = ["--warmup", "1", "--iterations", "2", "--peak-seconds", "0", "--threads", "1"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_bench_end_to_end_writes_csv_plot_and_summary(capsys, tmp_path, tiny_task_file):
    out_csv, png = tmp_path / "r.csv", tmp_path / "r.png"
    code, out, err = run(capsys, "bench", "--tasks", tiny_task_file, "--folds", "1,2,3", "--batch-sizes", "8",
                         "--backends", "eager,channels-last,onnxruntime", "--precisions", "fp32,bf16",
                         "--trials", "2", *FAST, "--out", out_csv, "--plot", png)
    assert code == 0, err
    with open(out_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    # 3 folds x (eager fp32, eager bf16, channels-last fp32, channels-last bf16, onnxruntime fp32) x 2 trials
    assert len(rows) == 3 * 5 * 2
    assert {r["Mode"] for r in rows} == {"Original", "Folded"}
    assert {r["Images"] for r in rows if r["Fold"] == "3"} == {"9"} and {r["Batch Size"] for r in rows} == {"8"}
    assert all(r["TputNorm"] == "1.0000" for r in rows if r["Mode"] == "Original")
    assert all(r["Utilization"] == "" for r in rows)  # --peak-seconds 0
    assert "notice: skipped onnxruntime bf16 on cpu" in err
    assert err.count("notice:") == 1
    assert "Best configuration per model and fold" in out and "tiny/game" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json_and_utilization(capsys, tmp_path, tiny_task_file):
    code, out, _ = run(capsys, "bench", "--tasks", tiny_task_file, "--folds", "1,2", "--batch-sizes", "4",
                       "--backends", "eager", "--trials", "1", "--warmup", "0", "--seconds", "0.01", "--threads", "1",
                       "--peak-seconds", "0.01", "--out", tmp_path / "r.csv", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data["peaks"]) == {"fp32"} and data["peaks"]["fp32"]["flops_per_sec"] > 0
    util = [r["utilization"] for r in data["records"]]
    assert all(u is not None and u > 0 for u in util)
    assert {b["fold"] for b in data["best"]} == {1, 2}
    assert data["machine"]["torch"] == torch.__version__


def test_bench_errors_are_one_line(capsys, tmp_path, tiny_task_file):
    code, _, err = run(capsys, "bench", "--tasks", tiny_task_file, "--backends", "turbo", "--out", tmp_path / "r.csv")
    assert code == 1 and "unknown backend turbo" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "bench", "--tasks", tiny_task_file, "--backends", "cuda-graphs", *FAST,
                       "--out", tmp_path / "r.csv")
    assert code == 1 and "every configuration was skipped" in err
    assert "notice: skipped cuda-graphs fp32 on cpu: the cuda-graphs backend runs on cuda; use --device cuda" in err
    assert not (tmp_path / "r.csv").exists()


def test_peak_command(capsys):
    code, out, _ = run(capsys, "peak", "--precision", "fp32", "--seconds", "0.01", "--threads", "1", "--json")
    (peak,) = json.loads(out)
    assert code == 0 and peak["precision"] == "fp32" and peak["flops_per_sec"] > 0 and peak["threads"] == 1


def test_cli_defaults_are_the_librarys_constants():
    from foldedcnns.benchmark import peak, runner
    from foldedcnns.benchmark import tune as search
    from foldedcnns.cli.main import build_parser

    def defaults(*argv):
        return vars(build_parser().parse_args(list(argv)))

    assert defaults("peak")["seconds"] == peak.DEFAULT_SECONDS
    bench = defaults("bench", "--out", "r.csv")
    assert bench["peak_seconds"] == peak.DEFAULT_SECONDS and bench["trials"] == runner.DEFAULT_TRIALS
    assert bench["folds"] == ",".join(map(str, runner.DEFAULT_FOLDS))
    assert bench["batch_sizes"] == ",".join(map(str, runner.DEFAULT_BATCH_SIZES))
    tuned = defaults("tune", "t")
    assert (tuned["screen_seconds"], tuned["seconds"], tuned["trials"]) == (
        search.SCREEN_SECONDS, search.FINAL_SECONDS, search.FINAL_TRIALS)
    assert tuned["peak_seconds"] == peak.DEFAULT_SECONDS and tuned["folds"] == ",".join(map(str, runner.DEFAULT_FOLDS))
    for command in (["bench", "--out", "r.csv"], ["tune", "t"], ["peak"], ["demo"]):
        assert defaults(*command, "--device", "cuda:1")["device"] == "cuda:1"  # one --device rule


def test_tune_checkpoint_with_data_reports_accuracy_cost_and_a_recommendation(capsys, tmp_path, tiny_task,
                                                                             tiny_checkpoint, image_folder):
    ckpt = tiny_checkpoint(2)
    image_folder(tiny_task, {"train": 1, "test": 3})  # a data set as training made it (evaluate's loop reads it)
    out_csv = tmp_path / "final.csv"
    code, out, err = run(capsys, "tune", ckpt, "--backends", "eager,onnxruntime", "--precisions", "fp32,bf16",
                         "--batch-sizes", "4,8", "--trials", "2", "--screen-seconds", "0.01", "--seconds", "0.01",
                         "--peak-seconds", "0", "--threads", "1", "--data", tmp_path / "data", "--out", out_csv,
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    (cost,) = data["accuracy"]  # eager bf16 (onnxruntime has no bf16 here)
    assert cost["backend"] == "eager" and cost["precision"] == "bf16" and cost["images"] == 9
    assert 0.0 <= cost["agreement"] <= 1.0
    assert {(b["mode"], b["fold"]) for b in data["best"]} == {("Original", 1), ("Folded", 2)}
    assert data["recommended"]["throughput"] == max(b["throughput"] for b in data["best"])
    with open(out_csv, newline="") as handle:
        assert {r["Trial"] for r in csv.DictReader(handle)} == {"1", "2"}


def test_tune_task_with_data_is_refused(capsys, tmp_path, tiny_task_file):
    code, _, err = run(capsys, "tune", tiny_task_file, "--data", tmp_path)
    assert code == 1 and "needs trained weights" in err


def test_exclude_pairs_are_parsed_and_bad_ones_named():
    from foldedcnns.benchmark.grid import parse_pairs
    from foldedcnns.errors import ConfigError

    assert parse_pairs("compile:fp32, eager:bf16") == (("compile", "fp32"), ("eager", "bf16"))
    assert parse_pairs("") == () and parse_pairs(None) == ()
    with pytest.raises(ConfigError, match="BACKEND:PRECISION"):
        parse_pairs("compile")
    with pytest.raises(ConfigError, match="unknown backend tensorrt"):
        parse_pairs("tensorrt:fp16")
    with pytest.raises(ConfigError, match="unknown precision int4"):
        parse_pairs("eager:int4")


def test_a_misspelt_backend_is_one_line_with_the_closest_name(capsys):
    assert main(["bench", "--tasks", "lol/goldnumber-fraction", "--backends", "opnvino", "--out", "never.csv"]) == 1
    assert capsys.readouterr().err.strip().startswith("foldedcnns: error: unknown backend opnvino (did you mean "
                                                      "'openvino'?)")
