"""A run directory read for the dashboard: its metrics as series, its spike scores and events, and warnings
about whatever part of it could not be read (a run killed mid-write still shows what it logged)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.monitor.jsonl import read_jsonl


@dataclass
class RunData:
    """What could be read from a run directory, series keyed by metric name as (steps, values).

    Example::

        run = load_run(Path("runs/exp1"))
        steps, losses = run.series["loss"]
    """

    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # logged step -> param -> score
    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; never raises for missing or damaged files (see ``RunData.warnings``)."""
    run = RunData()
    if not run_dir.is_dir():
        run.warnings.append(f"no run directory at {run_dir}: nothing to show")
        return run
    rows, warnings = read_jsonl(run_dir / rf.METRICS)
    run.warnings += warnings
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for row in sorted(rows, key=lambda r: r[rf.STEP]):
        for key, value in row.items():
            if key == rf.GRAD_SCORE and isinstance(value, dict):
                run.scores[row[rf.STEP]] = {k: v for k, v in value.items() if number(v) is not None}
            elif key != rf.STEP and (v := number(value)) is not None:
                points[key][row[rf.STEP]] = v
    run.series = {k: (list(p), list(p.values())) for k, p in points.items()}
    events, warnings = read_jsonl(run_dir / rf.SPIKES)
    run.warnings += warnings
    run.events = [e for e in events if isinstance(e.get("kind"), str) and isinstance(e.get("param"), str)]
    if len(run.events) < len(events):
        run.warnings.append(f"{rf.SPIKES}: skipped {len(events) - len(run.events)} event(s) without a kind "
                            "or param")
    if not rows and not events and not warnings:
        run.warnings.append(f"{run_dir} holds no logged steps yet")
    return run


def clipped_per_step(run: RunData) -> tuple[list[int], list[float]] | None:
    """Entries the optimizer clipped, per step of its clip events (else per row of the ``clipped`` metric);
    None when the optimizer reports no clips at all (it does not clip)."""
    clips: dict[int, float] = defaultdict(float)
    for e in run.events:
        if (e["kind"] == rf.CLIP_EVENT and isinstance(e.get("step"), int)
                and number(e.get("value")) is not None):
            clips[e["step"]] += e["value"]
    if clips:
        return sorted(clips), [clips[s] for s in sorted(clips)]
    return run.series.get(rf.CLIPPED)


def value_at(steps: list[int], values: list[float], step: int) -> float | None:
    """The value logged at or just before ``step`` (the first one when ``step`` comes earlier)."""
    if not steps:
        return None
    return values[max(bisect_right(steps, step) - 1, 0)]
