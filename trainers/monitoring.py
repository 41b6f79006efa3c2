"""The spike monitor and injector of ``spam_opt.monitor``, set up from the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from trainers.config import TrainConfig


def build_monitor(cfg: TrainConfig, model: nn.Module, optimizer: Any, run_dir: Path, accelerator: Any) -> Any:
    """The run's ``GradientSpikeMonitor``: the only writer of ``metrics.jsonl`` and ``spikes.jsonl``."""
    from spam_opt.monitor import GradientSpikeMonitor

    return GradientSpikeMonitor(model, optimizer=optimizer, run_dir=run_dir, mode=cfg.monitor_mode,
                                gss_threshold=cfg.gss_threshold, log_every=cfg.log_every,
                                accelerator=accelerator)


def build_injector(cfg: TrainConfig, model: nn.Module) -> Any:
    """A ``SpikeInjector`` when ``inject_spike_steps`` is set, else None."""
    if not cfg.inject_spike_steps:
        return None
    from spam_opt.monitor import SpikeInjector

    return SpikeInjector(model, cfg.inject_spike_steps, factor=cfg.inject_factor,
                         param_pattern=cfg.inject_pattern)


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the rows of steps after ``last_step``: a resumed run writes them again."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))
