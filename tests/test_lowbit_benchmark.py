"""The low-bit grid end to end (--quick): quantized runs through the trainer, the report and its coverage."""

from __future__ import annotations

import json

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def lowbit():
    return benchmark_scripts.load("lowbit")


def test_quick_lowbit_grid_trains_quantized_runs_and_reports_them(lowbit, tmp_path):
    argv = ["--quick", "--variants", "fp32 adamw,int4 spam", "--out", str(tmp_path)]
    results = lowbit.main(argv)
    # natural: both variants; harsh (10x lr, no warmup) takes the int4 variants only
    assert sorted((r["regime"], r["optimizer"]) for r in results) == [
        ("harsh", "int4 spam"), ("natural", "fp32 adamw"), ("natural", "int4 spam")]
    configs = {r["optimizer"]: (tmp_path / "runs" / "natural" / r["optimizer"] / "seed0" / "config.yaml")
               for r in results if r["regime"] == "natural"}
    assert "quant: int4" in configs["int4 spam"].read_text()
    assert "quant: none" in configs["fp32 adamw"].read_text()
    report = (tmp_path / "README.md").read_text()
    assert "## natural" in report and "| int4 spam |" in report and "Stable-SPAM 24.33" in report
    assert (tmp_path / "missing.md").read_text().startswith("3 of 3 runs")
    assert len(json.loads((tmp_path / "results.json").read_text())) == 3


@pytest.mark.parametrize("argv, message", [
    (["--variants", "int4 sgd"], "--variants"),
    (["--regimes", ""], "--regimes"),
    (["--steps", "0"], "--steps"),
])
def test_lowbit_bad_arguments_are_one_clear_error(lowbit, argv, message, capsys):
    with pytest.raises(SystemExit):
        lowbit.main(argv)
    assert message in capsys.readouterr().err
