"""The stability benchmark's pipeline end to end (--quick), and its spike and recovery measures."""

from __future__ import annotations

import json

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def stability():
    return benchmark_scripts.load("stability")


def test_loss_spike_and_recovery_measures(stability):
    losses = [3.0 - 0.01 * t for t in range(60)]
    losses[40] = 6.0  # a spike
    losses[41], losses[42] = 4.0, 3.0
    assert stability.loss_spikes(losses) == [40]
    steps = list(range(1, 61))
    # injected at step 40, the loss of step 41 shows it; the 5-step mean is back 4 steps after the injection
    assert stability.recovery_steps(steps, losses, at=40) == 4
    assert stability.loss_jump(steps, losses, at=40) == pytest.approx(6.0 - 2.63)
    assert stability.recovery_steps(steps, [1.0] * 30 + [9.0] * 30, at=30) is None


def test_quick_grid_runs_end_to_end_and_resumes(stability, tmp_path):
    argv = ["--quick", "--optimizers", "adamw,spam", "--regimes", "clean,spike-tensors",
            "--out", str(tmp_path)]
    results = stability.main(argv)
    assert len(results) == 4
    spiked = [r for r in results if r["regime"] == "spike-tensors"]
    assert all(r["curve"] and r["regime"] == "spike-tensors" for r in spiked)
    assert all(r["final_eval_loss"] is not None and r["state_bytes"] > 0 for r in results)
    report = (tmp_path / "README.md").read_text()
    assert "| spam |" in report and "## spike-tensors" in report
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == 4
    # finished runs are not repeated: a second call only reads result.json files
    first = (tmp_path / "runs" / "clean" / "adamw" / "seed0" / "result.json").stat().st_mtime_ns
    stability.main(argv)
    assert (tmp_path / "runs" / "clean" / "adamw" / "seed0" / "result.json").stat().st_mtime_ns == first


def test_burst_regime_injects_consecutive_steps_and_counts_recovery_from_the_last(stability, tmp_path):
    setup = stability.Setup("llama-tiny", 100, 2, 16, tmp_path, 0.05, 0.1)
    assert setup.injections("clean") == []
    assert setup.injections("spike-all") == [(30, 30), (50, 50), (70, 70)]
    burst = setup.injections("spike-burst")
    assert burst == [(t, t + stability.BURST_STEPS - 1) for t in (30, 50, 70)]
    first = setup.injected_steps("spike-burst")[:stability.BURST_STEPS]
    assert first == list(range(30, 30 + stability.BURST_STEPS))
    steps = list(range(1, 101))
    losses = [3.0] * 100
    for t in range(30, 37):  # losses[t] is step t + 1: up from step 31 (after the first injection) to 37
        losses[t] = 4.0
    # baseline: the steps up to 30; the 5-step mean is back from step 38, 4 steps after the last injection
    assert stability.recovery_steps(steps, losses, at=30, last=34) == 4
    assert stability.loss_jump(steps, losses, at=30, last=34) == pytest.approx(1.0)
