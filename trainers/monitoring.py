"""The spike monitor of ``spam_opt.monitor`` set up from the config, and its logs on resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from trainers.config import TrainConfig

logger = logging.getLogger(__name__)


def build_monitor(cfg: TrainConfig, model: nn.Module, optimizer: Any, run_dir: Path, accelerator: Any) -> Any:
    """The run's ``GradientSpikeMonitor``: the only writer of its logs (``spam_opt.run_files.LOGS``)."""
    from spam_opt.monitor import GradientSpikeMonitor

    return GradientSpikeMonitor(model, optimizer=optimizer, run_dir=run_dir, mode=cfg.monitor_mode,
                                gss_threshold=cfg.gss_threshold, log_every=cfg.log_every,
                                accelerator=accelerator)


def trim_jsonl(path: Path, last_step: int) -> None:
    """Drop the rows of steps after ``last_step`` (a resumed run writes them again), and any unreadable line.

    A run killed mid-write leaves a cut-off last line: it is dropped with a warning, as the dashboard does,
    and the readable rows are kept. The file is replaced atomically, so a crash here loses nothing either.
    """
    from spam_opt.monitor.jsonl import append_jsonl, read_jsonl

    if not path.is_file():
        return
    rows, warnings = read_jsonl(path)
    for warning in warnings:
        logger.warning("resuming: %s", warning.replace("showing", "keeping"))
    partial = path.with_name(f".{path.name}.trimmed")
    partial.unlink(missing_ok=True)
    partial.touch()
    append_jsonl(partial, [row for row in rows if row["step"] <= last_step])
    os.replace(partial, path)
