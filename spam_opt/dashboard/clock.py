"""A run's other x axes: tokens seen and wall-clock time at each logged step.

Both are read from ``metrics.jsonl`` when the trainer logged them (``tokens``, ``time``); otherwise tokens
are the step times the tokens of one step (batch x sequence length x accumulation x processes, from
``config.yaml``) and time adds up each logging interval's steps at the interval's logged throughput
(``tokens_per_s``): training time, without evaluations and checkpoints.
"""

from __future__ import annotations

from typing import Any

from spam_opt import run_files as rf
from spam_opt.dashboard.run_data import RunData

Series = tuple[list[int], list[float]]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def tokens_per_step(config: dict[str, Any]) -> int | None:
    """Tokens of one optimizer step, all processes together; None when the config does not tell.

    Example::

        tokens_per_step({"batch_size": 8, "seq_len": 256, "grad_accum": 2, "launch": {"num_processes": 4}})
        # 16384
    """
    launch = config.get(rf.LAUNCH) if isinstance(config.get(rf.LAUNCH), dict) else {}
    processes = _int(launch.get(rf.NUM_PROCESSES)) or 1
    per_process = _int(launch.get(rf.BATCH_SIZE_PER_PROCESS))
    if per_process is None and (global_batch := _int(config.get(rf.GLOBAL_BATCH_SIZE))) is not None:
        per_process = global_batch // processes
    per_process = per_process or _int(config.get(rf.BATCH_SIZE))
    seq_len, accum = _int(config.get(rf.SEQ_LEN)), _int(config.get(rf.GRAD_ACCUM)) or 1
    if per_process is None or seq_len is None:
        return None
    return per_process * seq_len * accum * processes


def _steps(run: RunData) -> list[int]:
    return sorted({s for steps, _ in run.series.values() for s in steps})


def tokens_seen(run: RunData, config: dict[str, Any]) -> Series | None:
    """(steps, tokens trained on up to each), as logged, else from the config; None when neither tells."""
    if rf.TOKENS in run.series:
        return run.series[rf.TOKENS]
    per_step = tokens_per_step(config)
    if per_step is None:
        return None
    steps = _steps(run)
    return steps, [float(s * per_step) for s in steps]


def elapsed_s(run: RunData, config: dict[str, Any]) -> Series | None:
    """(steps, seconds since the first logged row) from the logged ``time``, else training seconds from the
    logged throughput; None when neither is there."""
    if rf.TIME in run.series:
        steps, stamps = run.series[rf.TIME]
        return steps, [t - stamps[0] for t in stamps]
    speeds, per_step = run.series.get(rf.TOKENS_PER_S), tokens_per_step(config)
    if not speeds or per_step is None:
        return None
    elapsed, previous, seconds = 0.0, 0, []
    for step, speed in zip(*speeds):
        elapsed += (step - previous) * per_step / speed if speed > 0 else 0.0
        previous = step
        seconds.append(elapsed)
    return speeds[0], seconds
