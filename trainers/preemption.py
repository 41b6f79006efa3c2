"""Stopping a run cleanly: on a signal or before a time limit, every process at the same step.

Clusters end jobs with a signal (SLURM's ``--signal``, Kubernetes' SIGTERM before its grace period runs out).
``StopRequest`` records a signal when it arrives and only reads it at a step boundary, so the step in flight
finishes; the loop then writes a normal atomic checkpoint and exits with the run's exit code. A time limit
stops the run the same way before it runs out, keeping room for the last save (measured on the run's own
saves).

Under several processes, each may get the signal or not (a launcher may forward it to all, a scheduler to
one), and each reads its own clock: the processes agree by one all-reduce (MAX) of a two-entry flag, taken
only at logging steps (every ``log_every`` steps), where the monitor already waits for the device. A single
process reads its flag every step, which costs nothing.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
# Exit code of a run stopped because its loss stayed non-finite (docs/training.md, "Preemption and faults").
EXIT_DIVERGED = 3
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``3h50m``, ``90m``, ``45s``, ``1h30m15s``, or a plain number of seconds."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid time_limit={text!r}: write it like 3h50m, 90m, 45s or a number of seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class RunStopped(SystemExit):
    """Raised after a requested stop has been saved: exits the process with ``code``."""

    def __init__(self, code: int, step: int, reason: str) -> None:
        super().__init__(code)
        self.step, self.reason = step, reason


class StopRequest:
    """Signals and a time limit, turned into one decision per step that every process shares.

    Example::

        stop = StopRequest(["SIGTERM", "SIGUSR1"], time_limit_s=3600, check_every=10)
        with stop.installed():
            for step in range(1, max_steps + 1):
                train_step(step)
                if (reason := stop.should_stop(step, device)) is not None:
                    save(step)
                    break
    """

    def __init__(self, signals: list[str], time_limit_s: float | None, check_every: int,
                 start: float | None = None) -> None:
        self.signals, self.time_limit_s, self.check_every = list(signals), time_limit_s, check_every
        self.start = time.monotonic() if start is None else start
        self.received: str | None = None
        self.last_save_s: float | None = None
        self._loop_start: tuple[float, int] | None = None  # (time, step) at the first step, for the step time

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """A context in which the signals set the request (the previous handlers come back after)."""
        previous = {}
        for name in self.signals:
            signum = signal.Signals[name]
            try:
                previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                logger.warning("--save-on-signal: not in the main thread, %s is not handled", name)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            logger.warning("received %s: the run stops after the current step and saves a checkpoint", name)
        else:  # a second signal must not interrupt the save under way: the checkpoint stays whole
            logger.warning("received %s while stopping (after %s): already saving, then exiting", name,
                           self.received)

    def record_save(self, seconds: float) -> None:
        """How long a save took: the time limit keeps that much room (and a margin) for the last one."""
        self.last_save_s = seconds if self.last_save_s is None else max(seconds, self.last_save_s)

    def _out_of_time(self, step: int) -> bool:
        if self.time_limit_s is None:
            return False
        now = time.monotonic()
        if self._loop_start is None:
            self._loop_start = (now, step - 1)
        start_time, start_step = self._loop_start
        step_s = (now - start_time) / max(step - start_step, 1)
        # Until a save has been timed, reserve 5% of the limit for it.
        save_s = 1.5 * self.last_save_s if self.last_save_s is not None else 0.05 * self.time_limit_s
        # The next chance to stop is check_every steps away: those steps must fit too.
        return now - self.start + (self.check_every + 1) * step_s + save_s >= self.time_limit_s

    def should_stop(self, step: int, device: torch.device) -> str | None:
        """Why the run stops after ``step`` (the same answer on every process), or None. Every process calls
        it after every step; with several processes it communicates every ``check_every`` steps only."""
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        out_of_time = self._out_of_time(step)
        if distributed and step % self.check_every:
            return None
        flags = [self.received is not None, out_of_time]
        if distributed:
            shared = torch.tensor(flags, dtype=torch.int32, device=device)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in shared.tolist()]
        if flags[0]:
            return f"{self.received} received" if self.received else "a signal received by another process"
        if flags[1]:
            return f"the time limit {self.time_limit_s:.0f} s is near"
        return None
