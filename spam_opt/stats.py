"""What an optimizer step did about spikes, kept on device until someone reads it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MomentumReset:
    """A param group whose momentum schedule reset at a step: its moments start again from zero (a parameter
    without a gradient at that step is reset at its next step with one)."""

    group: int  # index in ``optimizer.param_groups``
    number: int  # resets of the group's schedule so far, this one included


@dataclass
class SpikeStats:
    """Per-parameter spike counts of the last optimizer step.

    ``clipped[i]`` is the number of entries of ``params[i]`` that the optimizer clipped (SPAM) or
    rescaled (Stable-SPAM's AdaClip) at the last step. ``nonfinite[i]`` is 1 when that parameter's
    gradient held NaN or Inf where the update reads it: SPAM then left those entries untouched,
    Stable-SPAM (whose AdaGN scales the whole tensor by its norm) the whole tensor. Both are int64
    tensors on the device of the first parameter; reading them (``.tolist()``) is the only host
    synchronisation, and it is the caller's choice when to pay it. ``resets`` lists the param groups whose
    momentum was reset at this step; the reset schedule runs on the host's step count, so it is known
    without reading the device.

    Example::

        stats = opt.spike_stats()
        if stats is not None:
            print(int(stats.clipped.sum()), "entries clipped at step", stats.step)
    """

    step: int
    params: list[Tensor]
    clipped: Tensor
    nonfinite: Tensor
    resets: tuple[MomentumReset, ...] = ()

    def total_clipped(self) -> Tensor:
        return self.clipped.sum()


def stack_counts(counts: list[Tensor], device: torch.device) -> Tensor:
    """One int64 tensor from per-parameter count scalars, without a host sync."""
    if not counts:
        return torch.zeros(0, dtype=torch.int64, device=device)
    if all(c.device == device for c in counts):  # one conversion for the stack rather than one per count
        return torch.stack(counts).to(torch.int64)
    return torch.stack([c.to(device=device, dtype=torch.int64) for c in counts])
