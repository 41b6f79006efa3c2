"""The lr sweep's next runs (``grid.sweep_pending``) and the length grid: plan, workers, claims, report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import benchmark_scripts
import pytest

GRID = (1e-3, 1e-2)  # the tests' lr grid: two values, so the best is always at an end


@pytest.fixture(scope="module")
def grid():
    return benchmark_scripts.load("grid")


@pytest.fixture(scope="module")
def lg():
    return benchmark_scripts.load("length_grid")


# -- grid.sweep_pending --------------------------------------------------------------------------------


def test_a_sweep_runs_the_missing_grid_lrs_first(grid):
    assert grid.sweep_pending({}) == list(grid.LR_GRID)
    assert grid.sweep_pending({3e-3: 2.0}, (1e-3, 3e-3, 1e-2)) == [1e-3, 1e-2]
    # even when a finished lr already wins at an end: the grid comes first
    assert grid.sweep_pending({1e-2: 1.0}, (1e-3, 3e-3, 1e-2)) == [1e-3, 3e-3]


def test_a_sweep_goes_on_past_a_winning_end_up_to_its_limit(grid):
    lrs = (1e-3, 3e-3, 1e-2)
    scores = {1e-3: 3.0, 3e-3: 2.9, 1e-2: 2.8}  # the top end wins: x3 past it, again while it wins
    for step in range(grid.SWEEP_EXTEND):
        pending = grid.sweep_pending(scores, lrs)
        assert pending == [float(f"{1e-2 * 3 ** (step + 1):.3g}")]
        scores[pending[0]] = 2.7 - step
    assert grid.sweep_pending(scores, lrs) == []  # SWEEP_EXTEND steps past the end: settled
    low = {1e-3: 2.0, 3e-3: 2.9, 1e-2: 3.0}  # the bottom end wins: /3
    assert grid.sweep_pending(low, lrs) == [0.000333]
    # a diverged run (inf) never wins; the best is then at the low end
    assert grid.sweep_pending({1e-3: 2.5, 3e-3: 2.6, 1e-2: math.inf}, lrs) == [0.000333]


def test_a_sweep_whose_best_is_interior_is_settled(grid):
    lrs = (1e-3, 3e-3, 1e-2)
    assert grid.sweep_pending({1e-3: 3.0, 3e-3: 2.5, 1e-2: 2.9}, lrs) == []
    # the extension lost: the old end is now interior
    assert grid.sweep_pending({1e-3: 3.0, 3e-3: 2.9, 1e-2: 2.8, 0.03: 2.85}, lrs) == []


# -- the length grid, with runs faked: its plan, the chosen lrs, workers' claims, the report ------------


def fake_loss(name: str, lr: float, best: float, seed: int) -> float:
    return 3.0 + abs(math.log10(lr / best)) + 0.01 * seed


# Each variant's best lr on the tuning split; validation prefers other lrs, so a choice made on validation
# would show. adamw: the grid's low end wins, and the extension below it loses (chosen 1e-3); spam: the top
# end wins, and so does the extension past it (chosen 0.03, the limit).
TUNE_BEST = {"adamw": 1e-3, "spam": 0.05, "int4-adamw": 1e-2}
VAL_BEST = {"adamw": 1e-2, "spam": 1e-3, "int4-adamw": 1e-2}


@pytest.fixture
def faked(lg, grid, monkeypatch):
    """The grid at a 2-lr grid and one extension, its runs replaced by result.json files; returns the
    jobs trained, in order."""
    monkeypatch.setattr(grid.sweep_pending, "__defaults__", (GRID,))
    monkeypatch.setattr(grid, "SWEEP_EXTEND", 1)
    trained = []

    def run(out, job):
        trained.append(job)
        result = {"optimizer": job.name, "regime": job.cell, "seed": job.seed, "lr": job.lr,
                  "steps": job.steps, "run_dir": str(job.run_dir), "wall_s": 1.0,
                  "final_eval_loss": fake_loss(job.name, job.lr, VAL_BEST[job.name], job.seed),
                  "final_tune_loss": fake_loss(job.name, job.lr, TUNE_BEST[job.name], job.seed)}
        job.run_dir.mkdir(parents=True)  # never twice: a run trained again would fail here
        (job.run_dir / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(lg, "run", run)
    return trained


def test_every_planned_cell_finishes_at_the_lr_with_the_lowest_tuning_loss(lg, faked, tmp_path):
    stages = (lg.Stage(200, ("adamw", "spam")), lg.Stage(200, ("adamw", "spam"), "bad-batch"),
              lg.Stage(1000, ("spam",), seeds=False))
    lg.work(tmp_path, stages)
    assert lg.plan(tmp_path, stages) == ([], 0)
    assert len({j.key for j in faked}) == len(faked)  # nothing trained twice
    assert lg.chosen_lr(tmp_path, 200, "adamw") == 1e-3 and lg.chosen_lr(tmp_path, 200, "spam") == 0.03
    swept: dict[tuple[int, str], list[float]] = {}
    for j in faked:
        if "/sweep/" in str(j.run_dir):
            swept.setdefault((j.steps, j.name), []).append(j.lr)
    swept = {k: sorted(v) for k, v in swept.items()}
    assert swept[(200, "adamw")] == [0.000333, 1e-3, 1e-2] and swept[(200, "spam")] == [1e-3, 1e-2, 0.03]
    assert swept[(1000, "spam")] == [1e-3, 1e-2, 0.03]
    runs, sweeps, missing = lg.collect(tmp_path, stages)
    assert len(sweeps) == 9
    # the sweep-only stage leaves its seeds 1 and 2 to a later stage: the report lists them
    assert missing == [f"clean / 1000 steps / spam / seed {s}" for s in (1, 2)]
    by_cell = {(r["regime"], r["optimizer"], r["seed"]): r for r in runs}
    assert len(by_cell) == len(runs) == 4 * lg.SEEDS + 1
    for name, lr in (("adamw", 1e-3), ("spam", 0.03)):
        seed0 = by_cell[("clean-200", name, 0)]  # the sweep's run at the chosen lr, not a new one
        assert seed0["lr"] == lr and "/sweep/" in seed0["run_dir"] and seed0["run_dir"].endswith(f"lr{lr:g}")
        assert [by_cell[("clean-200", name, s)]["lr"] for s in range(lg.SEEDS)] == [lr] * lg.SEEDS
        # the bad-batch row: every seed (0 included) trained, at the 200-step clean lr
        bad = [by_cell[("bad-batch-200", name, s)] for s in range(lg.SEEDS)]
        assert all(r["lr"] == lr and "/runs/bad-batch/" in r["run_dir"] for r in bad)
    lg.work(tmp_path, stages)  # a second pass trains nothing
    assert len(faked) == len({j.key for j in faked}) == 9 + 2 * 2 + 2 * lg.SEEDS


def test_a_stage_that_needs_another_s_sweep_trains_that_sweep(lg, faked, tmp_path, monkeypatch):
    """The bad-batch row alone (--stages 2 on a fresh folder) waits on the clean row's sweep: it must run it
    rather than wait forever for a stage that is not running."""

    def stuck(seconds):
        raise AssertionError("work() waits for a sweep no worker runs")

    monkeypatch.setattr(lg.time, "sleep", stuck)
    stages = (lg.Stage(200, ("adamw",), "bad-batch"),)
    lg.work(tmp_path, stages)
    assert lg.plan(tmp_path, stages) == ([], 0)
    assert sorted(j.seed for j in faked if j.regime == "bad-batch") == list(range(lg.SEEDS))
    assert {j.lr for j in faked if j.regime == "bad-batch"} == {1e-3}


def test_a_claim_held_by_a_live_worker_is_skipped_and_a_stale_one_taken_over(lg, faked, tmp_path,
                                                                              monkeypatch):
    stages = (lg.Stage(200, ("adamw",)),)
    first, second = lg.plan(tmp_path, stages)[0]  # the grid's two lrs
    live = tmp_path / "claims" / first.key
    live.parent.mkdir(parents=True)
    live.write_text(str(os.getppid()))  # a process that runs

    class Waiting(Exception):
        pass

    def wait(seconds):
        raise Waiting  # every runnable job is held by another worker

    monkeypatch.setattr(lg.time, "sleep", wait)
    with pytest.raises(Waiting):
        lg.work(tmp_path, stages)
    assert faked == [second] and live.read_text() == str(os.getppid())
    assert lg._claim(tmp_path, first) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live.write_text(str(dead.pid))  # its worker was stopped
    assert lg._claim(tmp_path, first) == live and live.read_text() == str(os.getpid())
    live.write_text(str(dead.pid))
    monkeypatch.setattr(lg.time, "sleep", lambda seconds: None)
    lg.work(tmp_path, stages)  # takes the stale claim over, then the extension and the seeds
    assert faked[1] == first and lg.plan(tmp_path, stages) == ([], 0)
    assert not any((tmp_path / "claims").iterdir())  # every claim released


@pytest.mark.parametrize("stages", ["0", "99", "1,x", "-1"])
def test_bad_stages_are_one_clear_error(lg, stages, capsys, tmp_path):
    with pytest.raises(SystemExit):
        lg.main(["--stages", stages, "--out", str(tmp_path), "--report-only"])
    assert f"--stages takes numbers from 1 to {len(lg.STAGES)}" in capsys.readouterr().err
    assert not (tmp_path / "README.md").exists()


def test_report_only_trains_nothing_and_lists_every_cell_of_the_stages_picked(lg, tmp_path):
    lg.main(["--stages", "2,1", "--out", str(tmp_path), "--report-only"])
    page = (tmp_path / "README.md").read_text()
    cells = 2 * len(lg.MAIN) * lg.SEEDS  # the clean and bad-batch rows of the four main variants
    assert f"**0 of {cells} cells have finished.**" in page
    assert "- bad-batch / 200 steps / muon / seed 2 (its lr sweep has not finished)" in page
    assert f"Command: `python -m benchmarks.length_grid --stages 2,1 --out {tmp_path}`" in page
    assert not (tmp_path / "steps200").exists() and not (tmp_path / "claims").exists()


def test_the_report_has_the_tables_and_lists_the_cells_not_yet_trained(lg, faked, tmp_path):
    trained = (lg.Stage(200, ("adamw", "spam")), lg.Stage(200, ("adamw", "spam"), "bad-batch"))
    lg.work(tmp_path, trained)
    lg.report(tmp_path, "python -m benchmarks.length_grid", trained)
    page = (tmp_path / "README.md").read_text()
    cells = 4 * lg.SEEDS
    assert f"All {cells} cells finished." in page and "## Not yet trained" not in page
    assert "| adamw | 0.001 |" in page and "| spam | 0.03 |" in page  # each row at its chosen lr
    assert "## Bad batches (200 steps)" in page and "**3.0000**" in page  # the chosen lr of the sweep
    later = trained + (lg.Stage(1000, ("adamw",)),)
    lg.report(tmp_path, "python -m benchmarks.length_grid", later)
    page = (tmp_path / "README.md").read_text()
    assert f"**{cells} of {cells + lg.SEEDS} cells have finished.**" in page and "## Not yet trained" in page
    assert "- clean / 1000 steps / adamw / seed 0 (its lr sweep has not finished)" in page
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == cells and len(saved["missing"]) == lg.SEEDS



def test_a_headline_rerun_has_its_own_table_paired_against_its_references(lg, faked, tmp_path):
    # spam twice at 1000 steps (a sweep-only stage, then its seeds), as the ablations train: one row
    stages = (lg.Stage(1000, ("adamw", "spam"), seeds=False), lg.Stage(1000, ("adamw", "spam")),
              lg.Stage(1000, ("int4-adamw",)))
    lg.work(tmp_path, stages)
    lg.report(tmp_path, "python -m benchmarks.length_grid", stages)
    page = (tmp_path / "README.md").read_text()
    main_table, headline = page.split("## INT4 training (LLaMA), 1000 steps")
    assert main_table.count("| spam | 0.03 |") == 1 and "| int4-adamw |" not in main_table
    # validation prefers 1e-2, int4-adamw's lr, to adamw's 1e-3 by 1 in fake_loss: -1.000 on every seed
    assert "| int4-adamw | 0.01 |" in headline
    assert f"-1.000 ± 0.000 ({lg.SEEDS} seeds)" in headline
    assert "− adamw's, paired | − int4-adamw's, paired |" in headline


def test_the_headline_variants_train_the_grids_models_and_quantization(lg, tmp_path):
    assert lg.setup_at(tmp_path, 1000, "spikegpt-int4-spam").model == "spikegpt-1m"
    assert lg.setup_at(tmp_path, 1000, "int4-spam").model == lg.setup_at(tmp_path, 1000, "spam").model
    for name in (*lg.LOWBIT, "spikegpt-int4-spam", "spikegpt-int4-stable-spam"):
        assert lg.variant(name, 1000)["quant"] == "int4"
    assert "quant" not in lg.variant("spikegpt-adamw", 1000)
    assert lg.variant("spam-d0.25-8bit", 1000) == {"optimizer": "spam", "density": 0.25, "state_bits": 8}


# -- the length grid end to end, with real (tiny) runs ---------------------------------------------------


@pytest.fixture(scope="module")
def smoke(lg, grid, tmp_path_factory, one_torch_thread):
    """llama-tiny, 8 steps, a 2-lr sweep, two seeds: a clean row for AdamW and Muon, AdamW's bad batches."""
    out = tmp_path_factory.mktemp("length")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid.sweep_pending, "__defaults__", (GRID,))
        patch.setattr(grid, "SWEEP_EXTEND", 0)
        patch.setattr(lg, "MODEL", "llama-tiny")
        patch.setattr(lg, "SEEDS", 2)
        patch.setattr(lg, "setup_at", lambda out, steps, name: grid.Setup(
            "llama-tiny", steps, 2, 32, out / f"steps{steps}", corpus_mb=0.2, seeds=2, eval_batches=2,
            tune_fraction=lg.TUNE_FRACTION))
        stages = (lg.Stage(8, ("adamw", "muon")), lg.Stage(8, ("adamw",), "bad-batch"))
        lg.work(out, stages)
        yield lg, out, stages


def test_a_small_grid_trains_every_cell_at_the_lr_its_tuning_split_chose(smoke):
    lg, out, stages = smoke
    runs, sweeps, missing = lg.collect(out, stages)
    assert missing == [] and len(runs) == 6 and len(sweeps) == 4
    assert all(math.isfinite(r["final_tune_loss"]) and r["final_tune_loss"] != r["final_eval_loss"]
               for r in runs + sweeps)
    for name in ("adamw", "muon"):
        swept = {r["lr"]: r for r in sweeps if r["optimizer"] == name}
        assert sorted(swept) == list(GRID)
        lr = min(swept, key=lambda lr: swept[lr]["final_tune_loss"])
        assert lg.chosen_lr(out, 8, name) == lr
        rows = sorted((r for r in runs if r["optimizer"] == name and r["regime"] == "clean-8"),
                      key=lambda r: r["seed"])
        assert [r["seed"] for r in rows] == [0, 1] and rows[0] == swept[lr]  # seed 0 is the sweep's run
        assert rows[1]["lr"] == lr and "--seed 1" in rows[1]["command"]
        assert "--tune-fraction" in rows[1]["command"]
    bad = [r for r in runs if r["regime"] == "bad-batch-8"]
    assert len(bad) == 2 and {r["lr"] for r in bad} == {lg.chosen_lr(out, 8, "adamw")}
    assert all("--bad-batch-steps" in r["command"] for r in bad)


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the plot's lengths are 200, 1000 and 2000
def test_a_small_grid_run_again_trains_nothing_and_reports(smoke):
    lg, out, stages = smoke
    results = sorted(out.rglob("result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    lg.work(out, stages)
    assert [p.stat().st_mtime_ns for p in sorted(out.rglob("result.json"))] == stamps
    lg.report(out, "cmd", stages)
    page = (out / "README.md").read_text()
    assert "All 6 cells finished." in page and "Command: `cmd`" in page
    lg.report(out, "cmd", stages + (lg.Stage(16, ("muon",)),))
    page = (out / "README.md").read_text()
    assert "**6 of 8 cells have finished.**" in page
    assert "- clean / 16 steps / muon / seed 1 (its lr sweep has not finished)" in page

