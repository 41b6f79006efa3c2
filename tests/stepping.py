"""Stepping an optimizer on given gradients and reading its spike counts: shared by the path tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from spam_opt.kernels.dispatch import Candidate


def step_and_count(opt: torch.optim.Optimizer, params: list[torch.Tensor],
                   grads: list[torch.Tensor]) -> tuple[list[int], list[bool]]:
    """Set the gradients, take one step, return the step's per-parameter (clipped, nonfinite) counts."""
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    stats = opt.spike_stats()
    return stats.clipped.tolist(), stats.nonfinite.tolist()


def grad_stream(shapes: list[tuple[int, ...]], steps: int, *, spikes: tuple[tuple[int, int, int], ...],
                nonfinite: tuple[tuple[int, int, int, float], ...] = (),
                seed: int = 0) -> list[list[torch.Tensor]]:
    """Gradients with a drifting scale, 1000x spikes on single entries (step, parameter, flat index) and
    NaN/Inf runs of 3 entries (step, parameter, flat index, value), at fixed steps."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(1, steps + 1):
        grads = [torch.randn(s, generator=gen) * (1 + 0.5 * torch.rand(1, generator=gen)) for s in shapes]
        for step, i, j in spikes:
            if step == t:
                grads[i].view(-1)[j] *= 1000.0
        for step, i, j, value in nonfinite:
            if step == t:
                grads[i].view(-1)[j:j + 3] = value
        stream.append(grads)
    return stream


def fused_on_cpu(table: Any, kernel: Any) -> Any:
    """``table`` (a ``spam_opt.kernels.dispatch.KernelTable``) with ``kernel`` as CPU's fused path: the tests
    run CUDA's compiled steps on CPU tensors (through Inductor's C++) with ``fused=True``."""
    compiled = Candidate("compiled", kernel, fused=True)
    return dataclasses.replace(table, devices={**table.devices, "cpu": (compiled,)})
