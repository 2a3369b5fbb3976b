"""`foldedcnns demo` end to end on a tiny budget: table, plot, report and a reusable output folder."""

import json

import pytest

from foldedcnns.cli.main import main
from foldedcnns.workflows import demo

# fp32 and int8 (calibrated on the demo's images); bf16 would add torch.compile's minutes and nothing to check
TINY = demo.DemoSettings(per_class=8, original_epochs=2, epochs=2, slot_warmup=1, bench_batch=16,
                         bench_seconds=0.05, bench_trials=1, peak_seconds=0.05, precisions=("fp32", "int8"))


class Stop(Exception):
    """Raised from the demo's phase callback to end a rerun once its data phase is over."""


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_the_report(tmp_path, monkeypatch, capsys, game_task, task_file):
    monkeypatch.setattr(demo, "QUICK", TINY)
    # A user-defined two-class game task with a tiny CNN: the synthetic set draws the class names.
    task = task_file(game_task("tiny/letters", 16, 24, ("A", "B")), "letters.json")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--task", str(task), "--fold", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for header in ("Top-1 %", "on best engine", "images/s", "speedup", "GFLOP/s", "utilization", "best engine"):
        assert header in printed
    assert "tiny/letters" in printed and "1.00x" in printed
    for name in ("report.md", "demo.png", "bench.csv", "demo.json"):
        assert (out / name).is_file()
    report = json.loads((out / "demo.json").read_text())
    assert [r["fold"] for r in report["rows"]] == [1, 2] and report["images"]["test"] == 2
    assert all(r["throughput"] > 0 for r in report["rows"]) and "eager" in report["backends"]
    assert all(0 <= r["engine_top1"] <= 100 for r in report["rows"])
    engines = {r["backend"] for r in report["rows"]}
    assert all(e.split()[1] in ("fp32", "int8") for e in engines)
    bench = (out / "bench.csv").read_text()
    if "openvino" in report["backends"] or "onnxruntime" in report["backends"]:
        assert ",int8," in bench  # an engine that quantizes was searched at int8
        assert any(n.startswith("int8 is calibrated on") and "train" in n for n in report["notices"])
    assert "| model | fold | Top-1 % |" in (out / "report.md").read_text()
    # The folder is the demo's: a rerun may use it, and keeps the data drawn with the same settings.
    data = out / demo.DATA_DIR / demo.SYNTH_MANIFEST
    stamp = data.stat().st_mtime_ns
    assert json.loads(data.read_text())["counts"] == report["images"]
    phases: list[str] = []

    def stop_at_training(text: str) -> None:
        phases.append(text)
        if text.startswith("training"):
            raise Stop(text)

    with pytest.raises(Stop):  # a rerun with the same settings: its data phase keeps the data
        demo.run_demo(out, task=task, fold=2, settings=TINY, on_phase=stop_at_training)
    assert len(phases) == 2 and phases[0].startswith("drawing synthetic")
    assert data.stat().st_mtime_ns == stamp


def test_demo_refuses_a_foreign_folder_and_a_non_game_task(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert "holds other files" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "new"), "--task", "cifar10"]) == 1
    assert "synthetic game-screen crops" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "new"), "--fold", "1"]) == 1
    assert "--fold must be an integer >= 2" in capsys.readouterr().err
