"""Functional SPAM kernels: the single-tensor reference and the multi-tensor (``foreach``) path.

The optimizer class owns the schedule (global step, momentum resets, mask redraws, warmup scale) and
hands each kernel one param group's tensors plus the scalars of this step. A kernel clips, updates the
moments, applies the bias-corrected Adam update and the decoupled weight decay, and leaves a parameter
and its moments untouched when its gradient holds NaN/Inf or when ``gate`` is False.

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
    nonfinite: list[Tensor]  # bool 0-dim per parameter: gradient held NaN/Inf, update skipped


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
    for p, grad, m, v, n, entries in zip(params, grads, exp_avgs, exp_avg_sqs, counts, kept):
        idx = None if entries is None else entries.indices()
        g = grad.float()
        g = -g if h.maximize else g
        finite = torch.isfinite(g).all()
        ok = finite if gate is None else finite & gate
        if idx is not None:
            g = g.reshape(-1).index_select(0, idx)
        if h.clip_threshold is not None:
            # v is the second moment before this step's update; an entry never seen (v == 0) is not a spike.
            bound = (h.clip_threshold * v).sqrt()
            spike = (g.abs() > bound) & (v > 0)
            g = torch.where(spike, g.sign() * bound, g)
            clipped.append(torch.where(ok, spike.sum(), 0))
        else:
            clipped.append(torch.zeros((), dtype=torch.int64, device=g.device))
        nonfinite.append(~finite)

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

        m.copy_(torch.where(ok, m_new, m))
        v.copy_(torch.where(ok, v_new, v))
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

    The skip decision (non-finite gradient, closed gate) is read on the host: free on CPU, one device sync
    per step elsewhere; the ``fused`` path keeps it on device.
    """
    device = params[0].device
    flat = [None if k is None else k.indices() for k in kept]
    g32 = [g.float() for g in grads]
    if h.maximize:
        g32 = torch._foreach_neg(g32)
    # inf-norm is NaN or Inf exactly when the tensor holds a NaN or an Inf.
    finite = torch.isfinite(torch.stack(torch._foreach_norm(g32, float("inf"))))
    ok = finite if gate is None else finite & gate
    nonfinite = list((~finite).unbind())
    clipped = [torch.zeros((), dtype=torch.int64, device=device) for _ in params]
    active = [i for i, flag in enumerate(ok.tolist()) if flag]
    if not active:
        return KernelResult(clipped, nonfinite)

    p_, m_, v_, n_ = ([seq[i] for i in active] for seq in (params, exp_avgs, exp_avg_sqs, counts))
    g_ = [g32[i] if flat[i] is None else g32[i].reshape(-1).index_select(0, flat[i]) for i in active]

    if h.clip_threshold is not None:
        bounds = torch._foreach_sqrt(torch._foreach_mul(v_, h.clip_threshold))
        clipped_g = []
        for g, b, v in zip(g_, bounds, v_):
            clipped_g.append(torch.where(v > 0, torch.minimum(torch.maximum(g, -b), b), g))
        # ord=0 counts the entries the clip changed.
        for i, c in zip(active, torch._foreach_norm(torch._foreach_sub(g_, clipped_g), 0)):
            clipped[i] = c.to(torch.int64)
        g_ = clipped_g

    torch._foreach_mul_(m_, h.beta1)
    torch._foreach_add_(m_, g_, alpha=1 - h.beta1)
    torch._foreach_mul_(v_, h.beta2)
    torch._foreach_addcmul_(v_, g_, g_, value=1 - h.beta2)
    torch._foreach_add_(n_, 1)

    step_sizes = [-h.lr * h.warmup_scale * (1 - h.beta2**c) ** 0.5 / (1 - h.beta1**c) for c in
                  (int(n.item()) for n in n_)]
    denom = torch._foreach_add_(torch._foreach_sqrt(v_), h.eps)
    updates = torch._foreach_div(m_, denom)
    torch._foreach_mul_(updates, step_sizes)

    # Decoupled weight decay acts on the updated parameter (after the Adam step), on every entry.
    decay = 1 - h.lr * h.weight_decay
    fp32_dense = [j for j, i in enumerate(active) if kept[i] is None and p_[j].dtype == torch.float32]
    if fp32_dense:
        dense_p = [p_[j] for j in fp32_dense]
        torch._foreach_add_(dense_p, [updates[j] for j in fp32_dense])
        if decay != 1:
            torch._foreach_mul_(dense_p, decay)
    for j, i in enumerate(active):
        if kept[i] is None and p_[j].dtype == torch.float32:
            continue
        # Sparse or low-precision parameters: update in float32, round once.
        p = p_[j]
        p32 = p.float().reshape(-1)
        p32 = p32 + updates[j].reshape(-1) if flat[i] is None else p32.index_add(0, flat[i], updates[j])
        if decay != 1:
            p32 = p32 * decay
        p.copy_(p32.view(p.shape))
    return KernelResult(clipped, nonfinite)
