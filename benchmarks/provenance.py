"""Where a result came from: the commit it ran at, whether the tree was clean, and the command.

Every grid run records these in its ``result.json`` and every timing table prints them, so that a reader
can tell which code made a number and rerun it (``benchmarks/rerun_cell.py`` checks one cell of a grid).

    >>> from benchmarks.provenance import source
    >>> sorted(source())
    ['commit', 'tree_clean']
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Grid runs and timing tables record their commit from this date on; a committed result without one is older.
RECORDED_SINCE = "2026-12-03"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source() -> dict[str, str | bool | None]:
    """``{"commit": sha or None, "tree_clean": whether tracked files match it (None when unknown)}``.

    Untracked files (run folders, caches) and the tracked files under ``benchmarks/results/`` do not count:
    they are not code the result depends on, and a benchmark run after another one finds its table
    rewritten.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results") if commit else None
    return {"commit": commit, "tree_clean": None if status is None else status == ""}


def module_command(module: str, argv: Sequence[str] | None, drop: Sequence[str] = ()) -> str:
    """``python -m benchmarks.<module> ARGS``: the command a script was run with, ``drop`` flags left out."""
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in drop]
    return " ".join(["python", "-m", f"benchmarks.{module}", *map(shlex.quote, given)])


def describe(sources: Sequence[dict[str, object]]) -> str:
    """One sentence on the commits a set of results ran at: one commit, several, or none recorded."""
    commits = sorted({str(s["commit"])[:10] for s in sources if s.get("commit")})
    unrecorded = sum(not s.get("commit") for s in sources)
    dirty = sum(s.get("tree_clean") is False for s in sources)
    parts = []
    if commits:
        where = f"commit {commits[0]}" if len(commits) == 1 else (
            f"{len(commits)} commits ({', '.join(commits)}): the results span code versions")
        parts.append(f"{len(sources) - unrecorded} ran at {where}"
                     + (f", {dirty} of them with uncommitted changes" if dirty else ""))
    if unrecorded:
        parts.append(f"{unrecorded} of {len(sources)}: commit not recorded (before {RECORDED_SINCE})")
    return "Provenance: " + "; ".join(parts) + "." if parts else "Provenance: nothing recorded."


def publish(text: str, output: str | Path) -> None:
    """Print a result table, and write it to ``output`` (making its folder) unless that is ``-``."""
    print(text)
    if str(output) != "-":
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def timing_line(load_summary: str) -> str:
    """A timing table's provenance: the commit (and whether the tree was clean), then ``machine_load``'s
    summary of the machine while it measured (idle, or **measured under load**)."""
    src = source()
    commit = f"commit {str(src['commit'])[:10]}" if src["commit"] else "commit unknown (not a git checkout)"
    dirty = " with uncommitted changes" if src["tree_clean"] is False else ""
    return f"Measured at {commit}{dirty}. {load_summary}"
