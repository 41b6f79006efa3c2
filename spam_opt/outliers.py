"""The one rolling outlier rule of spam-opt, shared by ``SpikeGuard`` (skip) and the monitor (loss spikes).

A value ``x`` is an outlier when at least ``min_history`` finite values have been seen and
``x > mean + sigma * std`` of the last ``window`` of them, strictly (``std`` is the sample standard
deviation, with n - 1). Its z-score is ``(x - mean) / std``. An outlier enters the history at the bound it
broke, ``mean + sigma * std``, not at its own size: recorded in full, one spike would inflate the deviation so
much that the next steps of a burst pass unflagged, while recording the bound still lets a lasting rise of the
level in, a little per step. A non-finite value is never recorded (and never an outlier: callers treat it on
its own). Because the guard and the monitor run this same code on the same values, the dashboard's "loss
spike" and the guard's "skip" agree step for step when both use the same window (their defaults differ:
docs/algorithm.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Values needed before anything is flagged: fewer give a standard deviation too noisy to judge by.
MIN_HISTORY = 20


def default_min_history(window: int) -> int:
    """``MIN_HISTORY``, or the whole window when it is shorter."""
    return min(MIN_HISTORY, window)


class RollingOutliers:
    """Mean and sample standard deviation of the last ``window`` finite values, in a ring buffer on device.

    ``observe`` decides and records in a few tensor ops, with no host synchronisation.

    Example::

        rule = RollingOutliers(window=128, device=loss.device)
        z, flagged = rule.observe(loss, sigma=6.0, min_history=20)  # 0-dim device tensors
    """

    def __init__(self, window: int, device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros(window, dtype=torch.float32, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # finite values seen, ever
        self._positions = torch.arange(window, device=device)

    def observe(self, x: Tensor, sigma: float, min_history: int) -> tuple[Tensor, Tensor]:
        """Score ``x`` against the history before it, then record it; returns (z-score, is an outlier).

        The z-score is +inf for a value above a constant history, NaN while the history is empty.
        """
        x = x.to(device=self.values.device, dtype=torch.float32).reshape(())
        window = self.values.numel()
        valid = self._positions < self.count
        n = self.count.clamp(max=window).to(torch.float32)
        mean = torch.where(valid, self.values, 0.0).sum() / n.clamp(min=1)
        var = torch.where(valid, (self.values - mean).square(), 0.0).sum() / (n - 1).clamp(min=1)
        std = var.sqrt()
        excess = x - mean
        bound = sigma * std
        finite = torch.isfinite(x)
        outlier = finite & (self.count >= min_history) & (excess > bound)
        z = torch.where(n > 0, excess / std, torch.nan)

        slot = (self.count % window).view(1)
        recorded = torch.where(outlier, mean + bound, x)
        kept = torch.where(finite, recorded, self.values.index_select(0, slot).squeeze(0))
        self.values.index_copy_(0, slot, kept.view(1))
        self.count += finite.to(torch.int64)
        return z, outlier

    def state_dict(self) -> dict[str, Tensor]:
        return {"values": self.values.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.values.copy_(state["values"].to(self.values.device))
        self.count.copy_(state["count"].to(self.count.device))
