"""benchmarks/detector_recall.py end to end on a tiny model: its runs, its table, recall from their events."""

from __future__ import annotations

import json
import shutil

import benchmark_scripts


def _flagged(result: dict, kind: str) -> list[bool]:
    # Recomputed here from the logged events, not through grid.detections, so that the report is checked
    # against the runs rather than against itself.
    return [any(a <= s <= b + 2 for s in result[f"{kind}_events"]) for a, b in result["injections"]]


def test_recall_table_comes_from_the_runs_events_and_resumes(tmp_path, monkeypatch):
    recall = benchmark_scripts.load("detector_recall")
    stability, grid_command = benchmark_scripts.load("stability"), benchmark_scripts.load("grid_command")
    # The gradient score of step n is at most n, so a spike is flaggable only past step gss_threshold (50):
    # one injection at step 63 of 70.
    monkeypatch.setattr(grid_command, "QUICK", grid_command.QUICK | {"steps": 70})
    monkeypatch.setattr(stability, "SPIKE_FRACTIONS", (0.9,))
    argv = ["--quick", "--factors", "2,1e6", "--out", str(tmp_path)]
    results = recall.main(argv)
    assert {r["regime"] for r in results} == {"spike-tensors-x2", "spike-all-x2", "spike-tensors-x1e+06",
                                              "spike-all-x1e+06"}
    by_regime = {r["regime"]: r for r in results}
    assert all(r["injections"] == [(63, 63)] and r["commit"] and r["command"] for r in results)
    for name in ("spike-tensors-x1e+06", "spike-all-x1e+06"):  # a millionfold spike is flagged at its step
        assert 63 in by_regime[name]["grad_events"] and _flagged(by_regime[name], "grad") == [True]
        assert by_regime[name]["injection_scores"][0] > 50
    for name in ("spike-tensors-x2", "spike-all-x2"):  # twice the gradient scores about 2: never flagged
        assert _flagged(by_regime[name], "grad") == [False]
        assert by_regime[name]["injection_scores"][0] < 50
    report = (tmp_path / "README.md").read_text()
    assert "above 50 (`gss_threshold`" in report and "previous 20 losses" in report
    for r in results:
        regime, factor = r["regime"].rsplit("-x", 1)
        grad, loss = _flagged(r, "grad"), _flagged(r, "loss")
        assert (f"| {regime} | {factor}x | 1 | {sum(grad):.2f} ({sum(grad)} of 1) | "
                f"{sum(loss):.2f} ({sum(loss)} of 1) |") in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["thresholds"]["gss_threshold"] == 50 and len(saved["runs"]) == 4

    # finished runs are not trained again
    done = tmp_path / "runs" / "spike-all-x2" / "adamw" / "seed0" / "result.json"
    first = done.stat().st_mtime_ns
    recall.main(argv)
    assert done.stat().st_mtime_ns == first

    # --report-only without the run folders: the same table from the committed results.json
    shutil.rmtree(tmp_path / "runs")
    again = recall.main(argv + ["--report-only"])
    assert (tmp_path / "README.md").read_text() == report
    assert [r["injection_scores"] for r in again] == [r["injection_scores"] for r in results]
