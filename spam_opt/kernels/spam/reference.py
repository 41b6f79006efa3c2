"""The single-tensor SPAM kernel: the rule of docs/algorithm.md written out, the oracle of the fast paths.

A kernel clips, updates the moments, applies the bias-corrected Adam update and the decoupled weight decay;
the optimizer class owns the schedule (global step, momentum resets, mask redraws, warmup scale). An entry
whose gradient is NaN/Inf keeps its value and its moments (the update is element-wise, so one bad entry costs
the others nothing), and a closed ``gate`` leaves every parameter and moment untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.inputs import StepScalars, TensorState


def keep_unmoved(new: Tensor, old: Tensor, moves: Tensor, idx: Tensor | None) -> Tensor:
    """``new``, except that the entries that did not move (``moves`` False: a NaN/Inf gradient) keep ``old``.

    ``moves`` holds one flag per entry, or under sparse momentum one per kept flat index in ``idx``; the
    entries left out never read their gradient, so they always take ``new``.
    """
    if idx is None:
        return torch.where(moves.view(new.shape), new, old)
    flat_new, flat_old = new.reshape(-1), old.reshape(-1)
    return flat_new.index_copy(0, idx, torch.where(moves, flat_new[idx], flat_old[idx])).view(new.shape)


def _bias_scale(count: Tensor, beta1: float, beta2: float) -> Tensor:
    return (1 - torch.pow(beta2, count)).sqrt() / (1 - torch.pow(beta1, count))


def spam_reference(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                   h: StepScalars) -> KernelResult:
    """One tensor at a time, everything decided on device (8-bit moments: dequantized, then requantized)."""
    return on_float32_moments(_reference, params, grads, states, gate, h)


def _reference(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
               h: StepScalars) -> KernelResult:
    clipped, nonfinite = [], []
    ok = torch.ones((), dtype=torch.bool, device=params[0].device) if gate is None else gate
    for p, grad, st in zip(params, grads, states):
        m, v, n = st.exp_avg, st.exp_avg_sq, st.step
        idx = None if st.kept is None else st.kept.indices()
        g = grad.float()
        g = -g if h.maximize else g
        if idx is not None:
            g = g.reshape(-1).index_select(0, idx)
        finite = torch.isfinite(g)  # the entries that move (under sparse momentum, of the kept ones)
        nonfinite.append(ok & ~finite.all())
        if h.clip_threshold is not None:
            # v is the second moment before this step's update; an entry never seen (v == 0) is not a spike.
            threshold = h.clip_threshold * v
            spike = finite & (v > 0) & (g * g > threshold)
            g = torch.where(spike, g.sign() * threshold.sqrt(), g)
            clipped.append(torch.where(ok, spike.sum(), 0))
        else:
            clipped.append(torch.zeros((), dtype=torch.int64, device=g.device))

        m_new = m * h.beta1 + g * (1 - h.beta1)
        v_new = v * h.beta2 + g * g * (1 - h.beta2)
        n_new = n + 1
        step_size = h.lr * h.warmup_scale * _bias_scale(n_new, h.beta1, h.beta2)
        update = m_new / (v_new.sqrt() + h.eps) * step_size
        p32 = p.float()
        if idx is None:
            p_new = p32 - update
        else:
            p_new = p32.reshape(-1).index_add(0, idx, -update).view_as(p32)
        if h.weight_decay != 0:
            p_new = p_new * (1 - h.lr * h.weight_decay)
        p_new = keep_unmoved(p_new, p32, finite, idx)

        m.copy_(torch.where(ok & finite, m_new, m))
        v.copy_(torch.where(ok & finite, v_new, v))
        n.copy_(torch.where(ok, n_new, n))
        p.copy_(torch.where(ok, p_new, p32))
    return KernelResult(clipped, nonfinite)
