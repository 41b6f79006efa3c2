"""The JSON-lines files of a run: appended in whole lines, read back tolerating a run killed mid-write."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/Infinity: a non-finite number is written as null so that every reader can parse it.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows, one JSON object per line, in one write (a reader never sees half of a batch's row)."""
    text = "".join(json.dumps(_finite_or_none(row), allow_nan=False) + "\n" for row in rows)
    if text:
        with path.open("a", encoding="utf-8") as f:
            f.write(text)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The readable rows of ``path`` and warnings about what was not readable (never raises for bad data).

    Example::

        rows, warnings = read_jsonl(run_dir / run_files.METRICS)
    """
    if not path.is_file():
        return [], [f"{path.name} is missing from {path.parent}: nothing to show from it"]
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as exc:
        return [], [f"{path} cannot be read: {exc}"]
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad.append(number)
    warnings = []
    if bad:
        last_line_cut = bad[-1] == len(lines) and lines[-1].strip()
        detail = " (the last line is cut short: was the run killed mid-write?)" if last_line_cut else ""
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.append(f"{path.name}: skipped {len(bad)} unreadable line(s) (line {shown}){detail}; "
                        f"showing the {len(rows)} readable row(s)")
    return rows, warnings
