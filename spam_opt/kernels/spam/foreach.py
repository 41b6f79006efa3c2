"""The multi-tensor SPAM kernel: all tensors of a group per ``torch._foreach_*`` op."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.inputs import StepScalars, TensorState
from spam_opt.kernels.spam.reference import keep_unmoved


def spam_foreach(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                 h: StepScalars) -> KernelResult:
    """The rule of ``spam_reference``, a group at a time (8-bit moments: one parameter at a time)."""
    return on_float32_moments(_foreach, params, grads, states, gate, h)


def _foreach(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
             h: StepScalars) -> KernelResult:
    """The group's float32 moments, a ``torch._foreach_*`` op for all of them.

    The gate and which tensors hold a NaN/Inf gradient are read on the host: free on CPU, one device sync
    per step elsewhere; the ``fused`` paths keep them on device.
    """
    device = params[0].device
    clipped = [torch.zeros((), dtype=torch.int64, device=device) for _ in params]
    nonfinite = [torch.zeros((), dtype=torch.bool, device=device) for _ in params]
    if gate is not None and not bool(gate):
        return KernelResult(clipped, nonfinite)
    exp_avgs = [st.exp_avg for st in states]
    exp_avg_sqs = [st.exp_avg_sq for st in states]
    flat = [None if st.kept is None else st.kept.indices() for st in states]
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
    counts = [st.step for st in states]
    torch._foreach_add_(counts, 1)

    step_sizes = [-h.lr * h.warmup_scale * (1 - h.beta2**c) ** 0.5 / (1 - h.beta1**c) for c in
                  (int(n.item()) for n in counts)]
    denom = torch._foreach_add_(torch._foreach_sqrt(exp_avg_sqs), h.eps)
    updates = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(updates, step_sizes)

    # Decoupled weight decay acts on the updated parameter (after the Adam step), on every entry.
    decay = 1 - h.lr * h.weight_decay
    fp32_dense = [i for i, p in enumerate(params) if flat[i] is None and p.dtype == torch.float32]
    if fp32_dense:
        dense_p = [params[i] for i in fp32_dense]
        torch._foreach_add_(dense_p, [updates[i] for i in fp32_dense])
        if decay != 1:
            torch._foreach_mul_(dense_p, decay)
    for i, p in enumerate(params):
        if flat[i] is None and p.dtype == torch.float32:
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
