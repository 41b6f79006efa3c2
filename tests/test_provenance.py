"""Where results come from: the commit and command every grid run records, and the script that reruns a cell
of a committed grid and demands its value (checked here on a one-cell grid trained by the test)."""

from __future__ import annotations

import json

import benchmark_scripts
import pytest
import torch


@pytest.fixture(scope="module")
def provenance():
    return benchmark_scripts.load("provenance")


def test_describe_says_which_commits_and_which_were_not_recorded(provenance):
    runs = [{"commit": "a" * 40, "tree_clean": True}, {"commit": "a" * 40, "tree_clean": False}, {}]
    text = provenance.describe(runs)
    assert "2 ran at commit aaaaaaaaaa, 1 of them with uncommitted changes" in text
    assert f"1 of 3: commit not recorded (before {provenance.RECORDED_SINCE})" in text
    spanning = provenance.describe([{"commit": "a" * 40}, {"commit": "b" * 40}])
    assert "2 commits" in spanning and "span code versions" in spanning


def test_module_command_drops_what_trains_nothing(provenance):
    command = provenance.module_command("lowbit", ["--variants", "fp32 adamw", "--report-only"],
                                        drop=("--report-only",))
    assert command == "python -m benchmarks.lowbit --variants 'fp32 adamw'"


@pytest.fixture(scope="module")
def one_cell_grid(tmp_path_factory):
    """A committed-looking grid of one quick run: results.json with its commit and trainer command."""
    out = tmp_path_factory.mktemp("grid")
    stability = benchmark_scripts.load("stability")
    stability.main(["--quick", "--optimizers", "adamw", "--regimes", "clean", "--out", str(out)])
    return out


def _rewrite(out, **changes):
    runs = json.loads((out / "results.json").read_text())
    runs[0].update(changes)
    (out / "results.json").write_text(json.dumps(runs))
    return runs[0]


def test_a_grid_run_records_its_commit_tree_and_trainer_command(one_cell_grid, provenance):
    run = json.loads((one_cell_grid / "results.json").read_text())[0]
    assert run["commit"] == provenance.source()["commit"] and isinstance(run["tree_clean"], bool)
    assert run["command"].startswith("python -m trainers.pretrain --model llama-tiny --max-steps 6")
    assert run["threads"] == torch.get_num_threads()  # the sums of SpikeGPT's reductions depend on it
    assert "Provenance: 1 ran at commit" in (one_cell_grid / "README.md").read_text()


def test_rerun_cell_demands_the_committed_value_at_the_same_commit(one_cell_grid, monkeypatch, capsys):
    rerun_cell = benchmark_scripts.load("rerun_cell")
    run = json.loads((one_cell_grid / "results.json").read_text())[0]
    here = {"commit": run["commit"], "tree_clean": True}
    monkeypatch.setattr(rerun_cell.provenance, "source", lambda: here)
    _rewrite(one_cell_grid, tree_clean=True)
    assert rerun_cell.main([str(one_cell_grid)]) == rerun_cell.SAME
    assert f"on {run['threads']} thread(s)" in (said := capsys.readouterr().out) and "the same" in said
    _rewrite(one_cell_grid, final_eval_loss=run["final_eval_loss"] + 0.01)  # a stale committed number
    assert rerun_cell.main([str(one_cell_grid)]) == rerun_cell.DIFFERENT
    assert "DIFFERENT" in capsys.readouterr().out


def test_rerun_cell_says_plainly_when_it_cannot_check(one_cell_grid, monkeypatch, capsys):
    rerun_cell = benchmark_scripts.load("rerun_cell")
    monkeypatch.setattr(rerun_cell.provenance, "source", lambda: {"commit": "f" * 40, "tree_clean": True})
    _rewrite(one_cell_grid, commit="e" * 40, tree_clean=True)
    assert rerun_cell.main([str(one_cell_grid)]) == rerun_cell.UNCHECKABLE
    assert "the run was made at eeeeeeeeee, this checkout is at ffffffffff" in capsys.readouterr().out
    _rewrite(one_cell_grid, commit=None)
    assert rerun_cell.main([str(one_cell_grid), "--cell", "clean/adamw/0"]) == rerun_cell.UNCHECKABLE
    assert "commit not recorded" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no committed run 'clean/spam/0'"):
        rerun_cell.main([str(one_cell_grid), "--cell", "clean/spam/0"])


def test_a_rewritten_results_table_leaves_the_tree_clean_and_changed_code_does_not(provenance, tmp_path,
                                                                                   monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("| 1.0 |\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert provenance.source()["tree_clean"] is True
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("| 1.1 |\n")  # a benchmark ran before
    assert provenance.source()["tree_clean"] is True
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.source()["tree_clean"] is False
