"""A run's row in a comparison: its settings (``config.yaml``, as the trainer writes it) and what its logs
add up to. Whatever is not there stays None, with a warning when its absence means something."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.dashboard.run_config import describe_optimizer, describe_quant
from spam_opt.dashboard.run_data import RunData, clipped_per_step


@dataclass
class RunSummary:
    """The numbers of one run, as shown in a comparison's table (None: not in this run's logs)."""

    model: str | None = None
    optimizer: str | None = None  # name and key options, e.g. "spam lr 0.001, density 0.25"
    quant: str | None = None  # low-bit training setting; None when off or unknown to the run
    last_step: int | None = None
    max_steps: int | None = None  # what the run was set to reach
    final_eval_loss: float | None = None
    best_eval_loss: float | None = None
    loss_spikes: int | None = None
    grad_spike_steps: int | None = None  # steps with at least one gradient spike event
    guard_skipped: int | None = None
    clipped: int | None = None
    momentum_resets: int | None = None
    tokens_per_s: float | None = None  # median over logged steps
    state_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)


def _last(run: RunData, key: str) -> float | None:
    values = run.series.get(key, ([], []))[1]
    return values[-1] if values else None


def summarize(run_dir: Path, run: RunData, config: dict[str, Any], warnings: list[str]) -> RunSummary:
    """The table row of the run in ``run_dir`` whose logs were read into ``run`` and whose settings are
    ``config`` (``warnings``: about reading them)."""
    steps = [s for keys in run.series.values() for s in keys[0]]
    evals = run.series.get(rf.EVAL_LOSS, ([], []))[1]
    clipped = clipped_per_step(run)
    tokens = run.series.get(rf.TOKENS_PER_S, ([], []))[1]
    skipped, state = _last(run, rf.GUARD_SKIPPED), _last(run, rf.OPTIMIZER_STATE_BYTES)
    events_read = (run_dir / rf.SPIKES).is_file()  # else its counts are unknown, not 0
    count = lambda n: n if events_read else None
    summary = RunSummary(
        model=str(config["model"]) if "model" in config else None,
        optimizer=describe_optimizer(config),
        quant=describe_quant(config),
        last_step=max(steps) if steps else None,
        max_steps=config.get("max_steps") if isinstance(config.get("max_steps"), int) else None,
        final_eval_loss=evals[-1] if evals else None,
        best_eval_loss=min(evals) if evals else None,
        loss_spikes=count(sum(e["kind"] == rf.LOSS_EVENT for e in run.events)),
        grad_spike_steps=count(len({e.get("step") for e in run.events if e["kind"] in rf.GRADIENT_KINDS})),
        guard_skipped=None if skipped is None else int(skipped),
        clipped=None if clipped is None else int(sum(clipped[1])),
        momentum_resets=count(sum(e["kind"] == rf.MOMENTUM_RESET_EVENT for e in run.events)),
        tokens_per_s=statistics.median(tokens) if tokens else None,
        state_bytes=None if state is None else int(state),
        warnings=list(warnings),
    )
    if summary.last_step is not None and summary.max_steps and summary.last_step < summary.max_steps:
        summary.warnings.append(f"the logs stop at step {summary.last_step} of {summary.max_steps}: "
                                "the run was cut off, or is still running")
    return summary
