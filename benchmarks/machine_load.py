"""Timings a busy machine cannot fool: wait for an idle machine, watch it while measuring, interleave what is
compared, and report medians with their spread.

Other jobs on the machine slow a benchmark down, and not every variant alike, so a table taken on a busy
machine can say the opposite of an idle one's. Every benchmark script here measures inside :func:`watch`:
it waits (bounded) until other processes leave the CPUs idle, then counts the CPU time they take while the
benchmark runs (from ``/proc/stat``, less this process's own time) next to the load average before and
after. When other processes took more than a tenth of the CPUs, or the machine never became idle, the
summary line starts with **measured under load** in bold. :func:`interleave` runs the compared variants in
turn, round after round, so a burst of load hits them alike; :func:`spread` writes a median with its range.

    with watch(max_wait_s=180) as load:
        seconds = interleave({"a": time_a, "b": time_b}, rounds=7)   # each callable returns its seconds
    lines.append(load.summary())
    lines.append(f"a: {spread(seconds['a'], scale=1e3)} ms")           # "12.3 (11.9..13.0) ms"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Other processes may take this share of all CPUs, before and while a benchmark runs, for it to count as idle.
BUSY_SHARE = 0.10
# How long each look at the machine lasts while waiting for it to become idle.
_POLL_S = 5.0


def add_wait_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-wait SECONDS``: how long a benchmark waits for an idle machine before measuring anyway."""
    parser.add_argument("--max-wait", type=float, default=180.0, metavar="SECONDS",
                        help="wait up to this long for other processes to leave the CPUs idle before "
                             "measuring; then measure anyway and mark the results as taken under load "
                             "(default 180; 0 measures at once)")


@dataclass(frozen=True)
class _Counters:
    """CPU time (clock ticks) of the whole machine, busy and in all, and of this process with the children
    it has waited for (a kernel build's compiler is the benchmark's own work, not another job's)."""

    busy: int
    total: int
    own: int

    @classmethod
    def read(cls) -> _Counters | None:
        """None where ``/proc`` is not there to read (not Linux)."""
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
        total = sum(fields[:8])  # user .. steal; guest time is already inside user
        return cls(busy=total - idle, total=total, own=sum(int(x) for x in own[11:15]))  # u/s time, children

    def others_share(self, later: _Counters) -> float:
        """The share of all CPUs that other processes kept busy between this reading and ``later``."""
        total = later.total - self.total
        others = (later.busy - self.busy) - (later.own - self.own)
        return max(0.0, others / total) if total > 0 else 0.0


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@dataclass
class Load:
    """What :func:`watch` saw: the 1-minute load average before and after, the share of the CPUs other
    processes took while measuring (None where it cannot be read), and whether the machine was idle at
    the start."""

    load_before: float | None
    idle_at_start: bool
    waited_s: float
    load_after: float | None = None
    others_share: float | None = None

    @property
    def under_load(self) -> bool:
        return not self.idle_at_start or (self.others_share is not None and self.others_share > BUSY_SHARE)

    def summary(self) -> str:
        """One markdown line for the results: bold **measured under load** first when it was."""
        def load(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        others = "n/a" if self.others_share is None else f"{self.others_share:.0%}"
        facts = (f"{os.cpu_count()} CPUs; load average {load(self.load_before)} before, "
                 f"{load(self.load_after)} after; other processes took {others} of the CPUs while measuring")
        if self.under_load:
            why = "the machine never became idle" if not self.idle_at_start else "others were busy"
            return (f"**measured under load** ({why}; {facts}): other jobs slow the variants unequally, so "
                    "these numbers do not stand for an idle machine's.")
        waited = f", after waiting {self.waited_s:.0f} s for it" if self.waited_s >= 1 else ""
        return f"Measured on an idle machine{waited} ({facts})."


def _wait_for_idle(max_wait_s: float) -> tuple[bool, float]:
    """Waits until other processes take at most BUSY_SHARE of the CPUs over a few seconds, or max_wait_s
    has passed; returns whether the machine became idle and how long this waited."""
    start = time.monotonic()
    previous = _Counters.read()
    if previous is None:  # no /proc: the load average, which trails by a minute, is all there is
        while True:
            load = _load_average()
            if load is None or load <= BUSY_SHARE * (os.cpu_count() or 1):
                return True, time.monotonic() - start
            if time.monotonic() - start >= max_wait_s:
                return False, time.monotonic() - start
            time.sleep(_POLL_S)
    told = False
    while True:
        time.sleep(min(_POLL_S, max_wait_s) if max_wait_s > 0 else 0.5)
        current = _Counters.read()
        share = previous.others_share(current)
        if share <= BUSY_SHARE:
            return True, time.monotonic() - start
        if time.monotonic() - start >= max_wait_s:
            return False, time.monotonic() - start
        if not told:
            print(f"machine busy (other processes take {share:.0%} of the CPUs); waiting up to "
                  f"{max_wait_s:.0f} s for it to become idle", file=sys.stderr)
            told = True
        previous = current


@contextlib.contextmanager
def watch(max_wait_s: float = 180.0) -> Iterator[Load]:
    """Waits (at most ``max_wait_s``) for an idle machine, then watches it while the block measures."""
    idle, waited = _wait_for_idle(max_wait_s)
    load = Load(load_before=_load_average(), idle_at_start=idle, waited_s=waited)
    start = _Counters.read()
    try:
        yield load
    finally:
        end = _Counters.read()
        load.load_after = _load_average()
        load.others_share = start.others_share(end) if start is not None and end is not None else None


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Runs each variant once per round, the first one of a round moving along each round, and collects the
    seconds each call returns (each variant times what it means to compare)."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(variants[name]())
    return seconds


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median (min..max)`` of ``values`` times ``scale``, with thousands separators."""
    low, mid, high = (x * scale for x in (min(values), statistics.median(values), max(values)))
    return f"{mid:,.{digits}f} ({low:,.{digits}f}..{high:,.{digits}f})"
