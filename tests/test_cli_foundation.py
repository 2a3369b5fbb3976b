"""The foundation commands end to end, in-process: models, flops, intensity, and their errors."""

import argparse
import csv
import io
import json

import pytest

from foldedcnns.cli.main import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_every_family(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["task"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["noscope/coral"]["input_size"] == [3, 50, 50]
    assert rows["lol/goldnumber-int"]["num_classes"] == 111
    assert rows["cifar100"]["family"] == "resnet"
    assert rows["compound/sot/timer3"]["family"] == "compound"
    assert rows["compound/sot/timer3"]["input_size"] == [3, 19, 26]


def test_flops_json(capsys):
    code, out, _ = run(capsys, "flops", "noscope/coral", "--fold", "4", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["flops_reference"] == 73_924_096
    assert data["input_shape"] == [12, 50, 50] and data["multiplier"] == 2.0
    assert data["flops"] == 2 * data["macs"] and data["flops_per_image"] == data["flops"] / 4
    assert {"task", "fold", "params"} <= set(data)


def test_flops_per_layer_and_description(capsys, game_task, task_file):
    desc = task_file(game_task("u/t", 20, 30))
    code, out, _ = run(capsys, "flops", "--description", str(desc), "--fold", "2", "--per-layer", "--json")
    data = json.loads(out)
    assert code == 0 and data["task"] == "u/t" and data["input_shape"] == [6, 20, 30]
    assert sum(layer["macs"] for layer in data["layers"]) == data["macs"]
    assert data["uncounted"]["MaxPool2d"] == 3
    code, out, _ = run(capsys, "flops", "lol/goldnumber-fraction", "--per-layer")
    assert code == 0 and "features.0" in out and "not counted" in out


def test_intensity_csv_and_plot(capsys, tmp_path):
    plot = tmp_path / "ai.png"
    code, out, _ = run(capsys, "intensity", "noscope/coral", "lol/goldnumber-fraction", "--batch-size", "1024",
                       "--bytes-per-element", "2", "--folds", "1,4", "--format", "csv", "--plot", str(plot))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert list(rows[0]) == ["task", "mode", "fold", "batch_size", "bytes_per_element", "ops", "bytes",
                             "arithmetic_intensity"]
    coral = {int(r["fold"]): float(r["arithmetic_intensity"]) for r in rows if r["task"] == "noscope/coral"}
    assert coral[1] == pytest.approx(58.7, rel=0.01) and coral[4] == pytest.approx(118.8, rel=0.01)
    assert [r["mode"] for r in rows if r["task"] == "lol/goldnumber-fraction"] == ["Original", "Folded", "Compound"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_intensity_default_covers_all_tasks(capsys):
    code, out, _ = run(capsys, "intensity", "--batch-size", "1024", "--bytes-per-element", "2")
    assert code == 0
    assert "noscope/taipei" in out and "sot/timer3" in out and "Compound" in out
    code, out, _ = run(capsys, "intensity", "sot/timer3", "--per-layer", "--folds", "1")
    assert code == 0 and "memory" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flops", "lol/nothing"], "unknown task"),
        (["flops"], "no task given"),
        (["flops", "cifar10", "--description", "x.json"], "either TASK or --description"),
        (["flops", "--description", "/nonexistent/d.json"], "does not exist"),
        (["intensity", "--folds", "1,x"], "comma-separated list"),
        (["intensity", "nope/task"], "unknown task"),
    ],
)
def test_errors_are_one_line_with_exit_1(capsys, argv, message):
    code, _out, err = run(capsys, *argv)
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["flops", "cifar10", "--fold", "0"], ["intensity", "--batch-size", "-3"]])
def test_argument_errors_exit_2_in_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "error" in err


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``parser`` (``("data", "synth")``, ...)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out += _subcommands(sub, (*prefix, name))
    return out


def test_every_commands_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse expands '%' in help texts: a bare '%' in one of them is a ValueError, only at --help time
    paths = _subcommands(build_parser())
    assert ("train",) in paths and ("data", "synth") in paths
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        assert "usage: foldedcnns " + " ".join(path) in capsys.readouterr().out
