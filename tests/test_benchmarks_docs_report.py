"""Markdown for docs/benchmarks.md: the best-vs-best table, targets, and the generated-section markers."""

import pytest
from docs_report import (
    best_vs_best_markdown,
    machine_markdown,
    profile_summary_markdown,
    replace_section,
)

from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.plots import plot_results
from foldedcnns.benchmark.profilers import LayerProfile, LayerTime
from foldedcnns.benchmark.records import BenchRecord, add_ratios
from foldedcnns.benchmark.summary import BestRow
from foldedcnns.errors import DataError


def best(model, mode, fold, tput, speedup, util=0.5, backend="onnxruntime"):
    return BestRow(model=model, mode=mode, fold=fold, backend=backend, precision="fp32", batch_size=1024,
                   images=1024, throughput=tput, speedup=speedup, same_config_speedup=speedup,
                   flops_per_sec=tput * 1e7, utilization=util, trials=3)


def test_best_vs_best_table_checks_the_targets_of_every_task():
    rows = [best("g", "Original", 1, 1000, 1.0), best("g", "Folded", 2, 1200, 1.2),
            best("g", "Folded", 4, 1800, 1.8, util=0.75),
            best("n", "Original", 1, 500, 1.0), best("n", "Folded", 4, 600, 1.2, util=0.3)]
    text = best_vs_best_markdown(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| task | best original (img/s) | f=2 | f=3 | f=4 |")
    game = next(line for line in lines if line.startswith("| g |"))
    assert "| 1.20x | n/a | 1.80x |" in game and "f=4 onnxruntime fp32 B=1024: 1,800" in game
    assert game.endswith("| 75.0% | yes | yes |")
    noscope = next(line for line in lines if line.startswith("| n |"))
    assert noscope.endswith("| 30.0% | **no** | **no** |")  # 1.2x: the 1.5x target holds for NoScope too


def test_profile_summary_gives_time_shares_and_conv_rate():
    layers = (LayerTime("c1", "conv", 0.02, 1e9), LayerTime("p", "pool", 0.01, 0.0), LayerTime("c2", "conv", 0.01, 2e9))
    profile = LayerProfile("g", 4, "channels-last", "bf16", 256, 256, layers)
    assert profile.share("conv") == 0.75 and profile.flops_per_sec("conv") == 1e11
    text = profile_summary_markdown([profile], {"bf16": Peak("cpu", "bf16", 1e12, 1024, 3, 2)})
    assert "| g | 4 | channels-last bf16 B=256 | 75.0% | 25.0% | 0.0% | 0.0% | 100.0 | 10.0% | 50.0 |" in text


def test_replace_section_keeps_the_prose_around_it():
    doc = "# T\n\nintro\n\n<!-- headline:cpu:start -->\nold\n<!-- headline:cpu:end -->\n\nanalysis\n"
    new = replace_section(doc, "headline:cpu", "new table")
    assert new == "# T\n\nintro\n\n<!-- headline:cpu:start -->\nnew table\n<!-- headline:cpu:end -->\n\nanalysis\n"
    appended = replace_section("# T\n", "headline:cuda", "gpu")
    assert appended.endswith("<!-- headline:cuda:start -->\ngpu\n<!-- headline:cuda:end -->\n")


def test_machine_details_list_cpu_versions_and_peaks():
    text = machine_markdown({"cpu": "Xeon X", "logical_cpus": 2, "torch_threads": 2, "cpu_flags": ["amx_bf16"],
                             "torch": "2.13.0", "onnxruntime": "1.32.0", "python": "3.11"},
                            {"fp32": Peak("cpu", "fp32", 9.5e10, 2048, 4, 2)})
    assert "Xeon X (2 logical CPUs, 2 PyTorch/ONNX Runtime threads; flags: amx_bf16)" in text
    assert "torch 2.13.0" in text and "Measured peak fp32: 95.0 GFLOP/s" in text


def test_plot_has_a_panel_per_task_and_a_speedup_panel(tmp_path):
    records = add_ratios([
        BenchRecord(model=m, trial=t, batch_size=b, mode=mode, fold=f, throughput=100.0 * f * (1 + b / 1024),
                    flops_per_sec=1e9, backend="eager", precision="fp32", device="cpu", images=b)
        for m in ("a/x", "b/y") for t in (1, 2) for b in (256, 1024)
        for mode, f in (("Original", 1), ("Folded", 2), ("Folded", 4), ("Compound", 1))])
    path = plot_results(records, tmp_path / "p.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="no benchmark records"):
        plot_results([], tmp_path / "q.png")
