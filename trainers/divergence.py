"""Stopping a run whose loss stays non-finite (``--max-bad-steps``), without a host sync per step.

The count of consecutive non-finite losses lives on the device and is read only where the host waits for
the device anyway: at logging steps (the stop) and at checkpoint steps (a state whose last loss was not
finite is not saved, so the last good checkpoint is never rotated away by a diverged one).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Diverged(RuntimeError):
    """The loss was not finite for ``max_bad_steps`` consecutive steps."""


class LossWatch:
    """Counts consecutive non-finite losses; ``limit`` 0 watches nothing.

    Example::

        watch = LossWatch(limit=20, device=torch.device("cpu"))
        watch.observe(loss)              # every step, on the device
        watch.check(step, last_checkpoint)   # at logging steps: raises Diverged
    """

    def __init__(self, limit: int, device: torch.device) -> None:
        self.limit = limit
        self.run = torch.zeros((), dtype=torch.int64, device=device)  # current streak
        self.worst = torch.zeros((), dtype=torch.int64, device=device)  # longest streak not yet checked

    def observe(self, loss: Tensor) -> None:
        if self.limit:
            self.run = torch.where(torch.isfinite(loss), 0, self.run + 1)
            self.worst = torch.maximum(self.worst, self.run)

    def latest_is_finite(self) -> bool:
        """Whether the last observed loss was finite (a host sync)."""
        return not self.limit or int(self.run) == 0

    def check(self, step: int, last_checkpoint: str | None) -> None:
        """Raise Diverged when a streak reached the limit (a host sync)."""
        if not self.limit:
            return
        worst = int(self.worst)
        if worst >= self.limit:
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "none was saved"
            raise Diverged(f"the loss was not finite for {worst} consecutive steps (up to step {step}, "
                           f"--max-bad-steps {self.limit}); {kept}: lower --lr, clip (--max-grad-norm), or "
                           "resume from an earlier checkpoint")
        self.worst = self.run.clone()
