"""Spike events: what ``spikes.jsonl`` holds, one JSON object per event.

==================  ==========================  =================================  ========================
kind                param                       score                              value
==================  ==========================  =================================  ========================
``grad_norm``       parameter name              ‖g‖ over its running mean          ‖g‖
``grad_max``        parameter name              max|g| over its running mean       max|g|
``element_gss``     parameter name              largest element-wise GSS           entries with GSS > thr.
``loss``            ``"loss"``                  (loss - rolling mean) / deviation  loss
``nonfinite``       parameter name or "loss"    null                               null
``clip``            parameter name              fraction of entries clipped        entries clipped
``momentum_reset``  ``"*"`` or group names      null                               reset number
==================  ==========================  =================================  ========================

``clip`` and ``momentum_reset`` events come from the optimizer's ``spike_stats()`` (its ``clipped`` counts
and its ``resets``). Running means follow the paper's Gradient Spike Score: the mean over all steps so far,
the current one included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from spam_opt.run_files import GRADIENT_KINDS, SPIKE_KINDS

__all__ = ["GRADIENT_KINDS", "SPIKE_KINDS", "SpikeEvent"]  # the kinds are named in spam_opt.run_files


@dataclass(frozen=True)
class SpikeEvent:
    step: int
    param: str
    kind: str
    score: float | None
    value: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
