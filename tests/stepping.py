"""Stepping an optimizer on given gradients and reading its spike counts: shared by the path tests."""

from __future__ import annotations

import torch


def step_and_count(opt: torch.optim.Optimizer, params: list[torch.Tensor],
                   grads: list[torch.Tensor]) -> tuple[list[int], list[bool]]:
    """Set the gradients, take one step, return the step's per-parameter (clipped, nonfinite) counts."""
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    stats = opt.spike_stats()
    return stats.clipped.tolist(), stats.nonfinite.tolist()
