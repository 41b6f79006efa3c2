"""What every kernel returns, and how a kernel that hands part of a group to another path merges results."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class KernelResult:
    """Per-parameter spike counts of one kernel call, on device (nothing here is read on the host)."""

    clipped: list[Tensor]  # int64 0-dim per parameter: entries clipped (SPAM) or scaled down (AdaClip)
    nonfinite: list[Tensor]  # bool 0-dim per parameter: NaN/Inf gradient entries were skipped

    @classmethod
    def merge(cls, n: int, parts: list[tuple[list[int], KernelResult]]) -> KernelResult:
        """The result of a group of ``n`` parameters from parts that each stepped some positions of it."""
        clipped: list[Tensor] = [torch.zeros((), dtype=torch.int64)] * n
        nonfinite: list[Tensor] = [torch.zeros((), dtype=torch.bool)] * n
        for positions, part in parts:
            for i, c, f in zip(positions, part.clipped, part.nonfinite):
                clipped[i], nonfinite[i] = c, f
        return cls(clipped, nonfinite)


# The one kernel signature: kernel(params, grads, states, gate, scalars). ``params`` and ``grads`` are the
# group's rank-local tensors, ``states`` each parameter's state as the optimizer's kernels read and write it
# (``spam_opt.kernels.spam.inputs.TensorState``, ...), ``gate`` an optional 0-dim bool device tensor (False:
# nothing moves), ``scalars`` the group's host scalars of this step.
Kernel = Callable[[list[Tensor], list[Tensor], list[Any], Tensor | None, Any], KernelResult]


def partition(taken: Iterable[bool]) -> tuple[list[int], list[int]]:
    """Positions that one path takes, and the others (for a kernel that hands some tensors on to another)."""
    fast: list[int] = []
    slow: list[int] = []
    for i, ok in enumerate(taken):
        (fast if ok else slow).append(i)
    return fast, slow
