"""Rerun one cell of a committed grid and demand its committed validation loss.

    python -m benchmarks.rerun_cell                                   # one cell of every committed grid
    python -m benchmarks.rerun_cell benchmarks/results/lowbit --cell "natural/int4 spam/0"

A grid run records the commit it ran at, whether the tree was clean, and its exact trainer command
(``grid.run_one``). When the checkout is at that commit with a clean tree, this trains the cell again with
that command (into a temporary folder) and fails unless the final validation loss equals the committed one
(to ``--tolerance``; the trainer is deterministic on one machine). When the commit differs or was never
recorded, it says so plainly and exits with status 2: the committed value cannot be checked from here
(``--anyway`` reruns all the same and prints the difference, for a recorded command).
"""

from __future__ import annotations

import argparse
import math
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import grid, provenance

RESULTS = provenance.ROOT / "benchmarks" / "results"
# Grids whose runs all train on a fixed thread count, for runs made before results recorded ``threads``:
# the length grid's workers run one thread each.
GRID_THREADS = {"length": 1}
SAME, DIFFERENT, UNCHECKABLE = 0, 1, 2


def committed_cell(folder: Path, cell: str | None) -> dict[str, Any]:
    """The committed run ``REGIME/VARIANT/SEED`` of the grid in ``folder`` (default: its first run)."""
    runs = grid.committed_runs(folder)
    if not runs:
        raise SystemExit(f"error: {folder} holds no results.json with runs: give a grid's results folder")
    if cell is None:
        return next(iter(runs.values()))
    regime, variant, seed = cell.rsplit("/", 2) if cell.count("/") >= 2 else (cell, "", "")
    key = (regime, variant, int(seed)) if seed.isdigit() else None
    if key not in runs:
        known = ", ".join(f"{r}/{v}/{s}" for r, v, s in list(runs)[:5])
        raise SystemExit(f"error: no committed run {cell!r} in {folder}: give REGIME/VARIANT/SEED, "
                         f"e.g. {known}")
    return runs[key]


def rerun_loss(command: str, threads: int) -> float | None:
    """The final validation loss of the trainer command, rerun into a temporary folder on ``threads``
    threads (the sum of a reduction split over threads depends on the split, so the count must match)."""
    from trainers.pretrain import main as pretrain

    torch.set_num_threads(threads)

    argv = shlex.split(command)[3:]  # after "python -m trainers.pretrain"
    with tempfile.TemporaryDirectory() as tmp:
        for flag, value in (("--output-dir", tmp), ("--run-name", "rerun")):
            argv[argv.index(flag) + 1] = value
        pretrain(argv)
        rows = grid.read_rows(Path(tmp) / "rerun" / "metrics.jsonl")
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return evals[-1] if evals else None


def check(folder: Path, cell: str | None = None, tolerance: float = 1e-6, anyway: bool = False,
          threads: int | None = None) -> int:
    """Rerun one cell of the grid in ``folder`` on ``threads`` threads (default: as the run recorded, else
    as its grid always runs, else this machine's default); SAME, DIFFERENT, or UNCHECKABLE (said why, on
    stdout)."""
    run = committed_cell(folder, cell)
    name = f"{folder.name}: {run['regime']} / {run['optimizer']} / seed {run['seed']}"
    recorded, here = run.get("commit"), provenance.source()
    if not recorded or "command" not in run:
        print(f"{name}: cannot check: commit not recorded (run before {provenance.RECORDED_SINCE}); the "
              "committed value comes from code this checkout may not hold: rerun the grid to record it")
        return UNCHECKABLE
    matches = recorded == here["commit"] and run.get("tree_clean") is True and here["tree_clean"] is True
    if not matches:
        print(f"{name}: cannot check here: the run was made at {recorded[:10]}"
              f"{'' if run.get('tree_clean') else ' with uncommitted changes'}, this checkout is at "
              f"{str(here['commit'])[:10]}{'' if here['tree_clean'] else ' with uncommitted changes'}; "
              f"check out {recorded[:10]} with a clean tree to demand the committed value")
        if not anyway:
            return UNCHECKABLE
    threads = threads or run.get("threads") or GRID_THREADS.get(folder.name) or torch.get_num_threads()
    loss, committed = rerun_loss(run["command"], threads), run["final_eval_loss"]
    same = loss is not None and committed is not None and math.isclose(loss, committed, rel_tol=0,
                                                                       abs_tol=tolerance)
    print(f"{name}: committed val loss {committed}, rerun on {threads} thread(s) {loss}: "
          + ("the same" if same else f"DIFFERENT (tolerance {tolerance:g})"))
    if not matches:
        return UNCHECKABLE
    return SAME if same else DIFFERENT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="*",
                        help="grid results folders (default: every committed grid under benchmarks/results)")
    parser.add_argument("--cell", default=None, help="REGIME/VARIANT/SEED (default: the grid's first run)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest accepted |difference|, nats")
    parser.add_argument("--anyway", action="store_true",
                        help="rerun even where the commit does not match, and print the difference")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads to train on (default: as the run recorded or its grid runs)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    folders = args.folders or sorted(p.parent for p in RESULTS.glob("*/results.json"))
    return max(check(folder, args.cell, args.tolerance, args.anyway, args.threads) for folder in folders)


if __name__ == "__main__":
    raise SystemExit(main())
