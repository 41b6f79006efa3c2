"""Functional SPAM kernels: the single-tensor reference and the multi-tensor (``foreach``) path.

The optimizer class owns the schedule (global step, momentum resets, mask redraws, warmup scale) and
hands each kernel one param group's tensors plus the scalars of this step. A kernel clips, updates the
moments, applies the bias-corrected Adam update and the decoupled weight decay. An entry whose gradient is
NaN/Inf keeps its value and its moments (the update is element-wise, so one bad entry costs the others
nothing), and a closed ``gate`` leaves every parameter and moment untouched.

Moments are float32 whatever the parameter dtype. For a sparse parameter (``kept`` is a ``KeptEntries``)
the moments hold only the kept entries, in ascending order of their flat index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spam_opt.sparse import KeptEntries


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one step for one param group (host values: no device sync to build them)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    warmup_scale: float
    clip_threshold: float | None  # None: clipping is off at this step
    maximize: bool


@dataclass
class KernelResult:
    clipped: list[Tensor]  # int64 0-dim per parameter: entries clipped
    nonfinite: list[Tensor]  # bool 0-dim per parameter: entries were skipped for a NaN/Inf gradient


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


def spam_reference(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    counts: list[Tensor],
    kept: list[KeptEntries | None],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """One tensor at a time, everything decided on device: the oracle the fast paths are tested against."""
    clipped, nonfinite = [], []
    ok = torch.ones((), dtype=torch.bool, device=params[0].device) if gate is None else gate
    for p, grad, m, v, n, entries in zip(params, grads, exp_avgs, exp_avg_sqs, counts, kept):
        idx = None if entries is None else entries.indices()
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


def spam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    counts: list[Tensor],
    kept: list[KeptEntries | None],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """All tensors of a group per ``torch._foreach_*`` op.

    The gate and which tensors hold a NaN/Inf gradient are read on the host: free on CPU, one device sync
    per step elsewhere; the ``fused`` path keeps them on device.
    """
    device = params[0].device
    clipped = [torch.zeros((), dtype=torch.int64, device=device) for _ in params]
    nonfinite = [torch.zeros((), dtype=torch.bool, device=device) for _ in params]
    if gate is not None and not bool(gate):
        return KernelResult(clipped, nonfinite)
    flat = [None if k is None else k.indices() for k in kept]
    g32 = [g.float() for g in grads]
    if h.maximize:
        g32 = torch._foreach_neg(g32)
    g_ = [g if idx is None else g.reshape(-1).index_select(0, idx) for g, idx in zip(g32, flat)]
    # inf-norm is NaN or Inf exactly when the tensor holds a NaN or an Inf.
    finite_norms = torch.isfinite(torch.stack(torch._foreach_norm(g_, float("inf")))).tolist()
    # Tensors with a NaN/Inf entry: the mask of entries that move, and the values the others keep.
    masks = {i: torch.isfinite(g_[i]) for i, ok in enumerate(finite_norms) if not ok}
    kept_values = {i: (exp_avgs[i].clone(), exp_avg_sqs[i].clone(), params[i].detach().clone())
                   for i in masks}
    for i in masks:
        nonfinite[i] = torch.ones((), dtype=torch.bool, device=device)

    if h.clip_threshold is not None:
        # v is the second moment before this step's update; an entry never seen (v == 0) is not a spike.
        thresholds = torch._foreach_mul(exp_avg_sqs, h.clip_threshold)
        clipped_g = []
        for i, (g, v, t) in enumerate(zip(g_, exp_avg_sqs, thresholds)):
            spike = (v > 0) & (g * g > t)
            if i in masks:
                spike &= masks[i]
            clipped[i] = spike.sum()
            clipped_g.append(torch.where(spike, g.sign() * t.sqrt(), g))
        g_ = clipped_g

    torch._foreach_mul_(exp_avgs, h.beta1)
    torch._foreach_add_(exp_avgs, g_, alpha=1 - h.beta1)
    torch._foreach_mul_(exp_avg_sqs, h.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, g_, g_, value=1 - h.beta2)
    torch._foreach_add_(counts, 1)

    step_sizes = [-h.lr * h.warmup_scale * (1 - h.beta2**c) ** 0.5 / (1 - h.beta1**c) for c in
                  (int(n.item()) for n in counts)]
    denom = torch._foreach_add_(torch._foreach_sqrt(exp_avg_sqs), h.eps)
    updates = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(updates, step_sizes)

    # Decoupled weight decay acts on the updated parameter (after the Adam step), on every entry.
    decay = 1 - h.lr * h.weight_decay
    fp32_dense = [i for i, p in enumerate(params) if kept[i] is None and p.dtype == torch.float32]
    if fp32_dense:
        dense_p = [params[i] for i in fp32_dense]
        torch._foreach_add_(dense_p, [updates[i] for i in fp32_dense])
        if decay != 1:
            torch._foreach_mul_(dense_p, decay)
    for i, p in enumerate(params):
        if kept[i] is None and p.dtype == torch.float32:
            continue
        # Sparse or low-precision parameters: update in float32, round once.
        p32 = p.float().reshape(-1)
        p32 = p32 + updates[i].reshape(-1) if flat[i] is None else p32.index_add(0, flat[i], updates[i])
        if decay != 1:
            p32 = p32 * decay
        p.copy_(p32.view(p.shape))

    for i, moves in masks.items():
        m_old, v_old, p_old = kept_values[i]
        exp_avgs[i].copy_(torch.where(moves, exp_avgs[i], m_old))
        exp_avg_sqs[i].copy_(torch.where(moves, exp_avg_sqs[i], v_old))
        params[i].copy_(keep_unmoved(params[i], p_old, moves, flat[i]))
    return KernelResult(clipped, nonfinite)
