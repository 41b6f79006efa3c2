"""The grid runner and the stability benchmark end to end (--quick), and their spike and recovery measures."""

from __future__ import annotations

import json
import re

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def stability():
    return benchmark_scripts.load("stability")


@pytest.fixture(scope="module")
def grid(stability):
    return benchmark_scripts.load("grid")  # the runner the script imports from beside it


def test_eval_noise_spread_is_the_std_of_subset_means_and_its_standard_error():
    eval_noise = benchmark_scripts.load("eval_noise")
    values = [1.0] * 8 + [3.0] * 8 + [2.0] * 8  # subset means 1, 3, 2: std 1, standard error 1/sqrt(3)
    assert eval_noise.spread(values) == pytest.approx((1.0, 3 ** -0.5))


def test_loss_spike_and_recovery_measures(grid):
    losses = [3.0 - 0.01 * t for t in range(60)]
    losses[40] = 6.0  # a spike
    losses[41], losses[42] = 4.0, 3.0
    assert grid.loss_spikes(losses) == [40]
    steps = list(range(1, 61))
    # injected at step 40, the loss of step 41 shows it; the 5-step mean is back 4 steps after the injection
    assert grid.recovery_steps(steps, losses, at=40) == 4
    assert grid.loss_jump(steps, losses, at=40) == pytest.approx(6.0 - 2.63)
    assert grid.recovery_steps(steps, [1.0] * 30 + [9.0] * 30, at=30) is None


def test_loss_flags_are_the_monitors_rule_replayed_over_the_curve(grid):
    # a fast early fall, then a noisy plateau; a degenerate batch at step 60 jumps the loss to 7.5
    curve = [(t, 5.5 - 2.5 * t / 30 + 0.05 * (t % 3)) for t in range(1, 31)]
    curve += [(t, 3.0 + 0.05 * (t % 3)) for t in range(31, 80)]
    curve[59] = (60, 7.5)
    assert grid.monitor_loss_events(curve) == [60]


def test_detector_scores_count_flags_near_each_injection(grid):
    result = {"injections": [(10, 10), (20, 24), (40, 40)], "grad_events": [10, 26, 33], "loss_events": [11],
              "steps": 500}
    assert grid.detections(result, "grad") == [True, True, False]  # 26 is within 2 steps of the burst's end
    assert grid.detections(result, "loss") == [True, False, False]
    # a false flag is a flag on a step with no injection: 33 only (10 and 26 fall in injection windows)
    assert grid.false_flags(result, "grad") == 1
    assert grid.false_flags(result | {"injections": []}, "grad") == 3  # a clean run: every flag is false


def test_quick_grid_runs_end_to_end_and_resumes(stability, grid, tmp_path):
    argv = ["--quick", "--optimizers", "adamw,spam", "--regimes", "spike-tensors,bad-batch",
            "--out", str(tmp_path)]
    results = stability.main(argv)
    assert len(results) == 4
    spiked = [r for r in results if r["regime"] == "spike-tensors"]
    assert all(r["curve"] and r["regime"] == "spike-tensors" for r in spiked)
    assert all(r["final_eval_loss"] is not None and r["state_bytes"] > 0 for r in results)
    report = (tmp_path / "README.md").read_text()
    assert "| spam |" in report and "## spike-tensors" in report
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    page = (tmp_path / "comparison.html").read_text()  # every run's curves, a section per regime
    assert '<h2 id="section-1">bad-batch</h2>' in page and page.count(">spam seed 0</td>") == 2
    assert "## The monitor as a detector" in report
    # 2 unclipped variants x 3 injections; no variant clips in the trainer
    assert re.search(r"\| bad-batch \| \d\.\d\d \(6\) \| n/a \| \d\.\d\d \(6\) \|", report)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == 4
    # finished runs are not repeated: a second call only reads result.json files
    first = (tmp_path / "runs" / "bad-batch" / "adamw" / "seed0" / "result.json").stat().st_mtime_ns
    stability.main(argv)
    assert (tmp_path / "runs" / "bad-batch" / "adamw" / "seed0" / "result.json").stat().st_mtime_ns == first
    assert (tmp_path / "missing.md").read_text().startswith("4 of 4 runs")
    # --report-only trains nothing: a variant never run is listed as missing, and the report says so
    partial = stability.main(["--quick", "--optimizers", "adamw,spam,stable-spam", "--regimes",
                              "spike-tensors,bad-batch", "--out", str(tmp_path), "--report-only"])
    assert len(partial) == 4 and not (tmp_path / "runs" / "bad-batch" / "stable-spam").exists()
    missing = (tmp_path / "missing.md").read_text()
    assert missing.startswith("4 of 6 runs") and "- bad-batch / stable-spam / seed 0" in missing
    assert "**4 of 6 runs of this grid have finished" in (tmp_path / "README.md").read_text()
    # the evaluation's noise lands in the grid's folder, where the reports read it
    eval_noise = benchmark_scripts.load("eval_noise")
    runs = tmp_path / "runs" / "bad-batch"
    noise = eval_noise.main([str(runs / "adamw" / "seed0"), str(runs / "spam" / "seed0")])
    assert json.loads((tmp_path / "eval_noise.json").read_text()) == noise
    assert noise["diff_whole_se"] < noise["diff_subset_std"]  # more tokens, less noise
    assert f"{noise['tokens']} tokens" in grid.noise_note(tmp_path)


def test_regimes_inject_where_they_say_and_burst_recovery_counts_from_the_last(stability, grid, tmp_path):
    setup = grid.Setup("llama-tiny", 100, 2, 16, tmp_path)
    regimes = stability.REGIMES
    assert regimes["clean"].injections(setup, 100) == []
    assert regimes["spike-all"].injections(setup, 100) == [(30, 30), (50, 50), (70, 70)]
    burst = regimes["spike-burst"].injections(setup, 100)
    assert burst == [(t, t + stability.BURST_STEPS - 1) for t in (30, 50, 70)]
    options = regimes["spike-burst"].options(setup, 100)
    first_burst = options["inject_spike_steps"][:stability.BURST_STEPS]
    assert first_burst == list(range(30, 30 + stability.BURST_STEPS))
    entry = regimes["entry-spikes"].options(setup, 100)
    assert entry["inject_fraction"] == stability.ENTRY_FRACTION and "proj" in entry["inject_pattern"]
    assert regimes["bad-batch"].options(setup, 100)["bad_batch_steps"] == [30, 50, 70]
    argv = grid.trainer_argv(setup, stability.OPTIMIZERS["spam"], regimes["long"], 0, 1e-3, tmp_path / "r")
    assert argv[argv.index("--max-steps") + 1] == str(100 * stability.LONG_FACTOR)
    assert '"reset_interval": 50' in argv[argv.index("--optimizer-kwargs") + 1]  # 1/20 of the long run
    steps = list(range(1, 101))
    losses = [3.0] * 100
    for t in range(30, 37):  # losses[t] is step t + 1: up from step 31 (after the first injection) to 37
        losses[t] = 4.0
    # baseline: the steps up to 30; the 5-step mean is back from step 38, 4 steps after the last injection
    assert grid.recovery_steps(steps, losses, at=30, last=34) == 4
    assert grid.loss_jump(steps, losses, at=30, last=34) == pytest.approx(1.0)


def test_a_smoke_run_never_writes_into_the_committed_results(stability, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    stability.main(["--quick", "--optimizers", "adamw", "--regimes", "clean"])
    assert (tmp_path / "runs" / "smoke" / "stability" / "README.md").is_file()
    assert not (tmp_path / "benchmarks").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0"], "--seeds 0"), (["--optimizers", ""], "--optimizers is empty"),
    (["--regimes", "clean,storm"], "unknown regime 'storm'"), (["--lrs", "adamw=fast"], "invalid --lrs"),
])
def test_bad_arguments_are_one_clear_error(stability, argv, message, capsys):
    with pytest.raises(SystemExit):
        stability.main(["--quick", *argv])
    assert message in capsys.readouterr().err
