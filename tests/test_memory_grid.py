"""The memory-matched grid end to end (--quick): measured state bytes, GaLore's matched rank, the report."""

from __future__ import annotations

import json

import benchmark_scripts
import pytest


def test_quick_memory_grid_measures_state_and_writes_the_pareto_report(tmp_path):
    memory_grid = benchmark_scripts.load("memory_grid")
    rows = memory_grid.main(["--quick", "--variants", "adamw,galore,spam-d0.25,spam-d0.25-8bit",
                             "--out", str(tmp_path)])
    by_name = {r["variant"]: r for r in rows}
    # measured from the optimizers' tensors: AdamW keeps 8 bytes per parameter (m and v in float32)
    assert by_name["adamw"]["bytes_per_param"] == pytest.approx(8.0, rel=1e-6)
    # (llama-tiny's dense embeddings and head weigh more than the grid model's: d=0.25 keeps more than 2.5)
    assert (by_name["spam-d0.25-8bit"]["bytes_per_param"] < by_name["spam-d0.25"]["bytes_per_param"]
            < by_name["adamw"]["bytes_per_param"])
    # GaLore's rank is the one whose state comes closest to SPAM d=0.25's
    assert abs(by_name["galore"]["bytes_per_param"] - by_name["spam-d0.25"]["bytes_per_param"]) < 1.0
    report = (tmp_path / "README.md").read_text()
    assert "| spam-d0.25-8bit |" in report and "GaLore rank" in report
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["timing"]["commit"]
    assert "Step column: Measured at commit" in report  # with machine_load's idle / under-load line
    # --report-only keeps the step column it holds; --retime measures it again, training nothing
    ratios = {r["variant"]: r["step_ratio"] for r in rows}
    argv = ["--quick", "--variants", "adamw,galore,spam-d0.25,spam-d0.25-8bit", "--out", str(tmp_path),
            "--report-only"]
    assert {r["variant"]: r["step_ratio"] for r in memory_grid.main(argv)} == ratios
    assert {r["variant"]: r["step_ratio"] for r in memory_grid.main([*argv, "--retime"])} != ratios


def test_memory_grid_bad_arguments_are_one_clear_error(capsys):
    memory_grid = benchmark_scripts.load("memory_grid")
    with pytest.raises(SystemExit):
        memory_grid.main(["--variants", "adamw,sgd"])
    assert "--variants" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        memory_grid.main(["--lrs", "spam-8bit=fast"])
    assert "NAME=LR" in capsys.readouterr().err
