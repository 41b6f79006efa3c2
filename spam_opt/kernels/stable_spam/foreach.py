"""The multi-tensor Stable-SPAM kernel: per-tensor scalars as vectors, moment and parameter updates as
``torch._foreach_*`` ops."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt._distributed import all_reduce_per_tensor
from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.stable_spam.inputs import StepScalars, TensorState
from spam_opt.kernels.stable_spam.reference import abs_max


def stable_spam_foreach(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                        h: StepScalars) -> KernelResult:
    """``_foreach`` below; 8-bit moments one parameter at a time, through their float32 values."""
    return on_float32_moments(_foreach, params, grads, states, gate, h)


def _foreach(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
             h: StepScalars) -> KernelResult:
    """The per-tensor scalars of a group as one vector each, and the moment/parameter updates as
    ``torch._foreach_*`` ops. A skipped tensor gets multipliers of 1 and increments of exactly 0, which
    leaves its values bit-identical without a per-tensor branch."""
    g32 = [g.float() for g in grads]
    shard_groups = [st.shard_groups for st in states]
    resets = [st.reset for st in states]
    stack = lambda ts: torch.stack(list(ts))
    amax = all_reduce_per_tensor(stack(abs_max(g) for g in g32), shard_groups, "max")
    finite = torch.isfinite(amax)
    ok = finite if gate is None else finite & gate

    n_c = stack(st.step for st in states) + 1
    max_ema = stack(st.max_ema for st in states) * h.theta + amax * (1 - h.theta)
    max_hat = max_ema / (1 - torch.pow(h.theta, n_c))
    ratio = max_hat / amax
    clipped_g, spikes = [], []
    for g, bound, r in zip(g32, max_hat.unbind(), ratio.unbind()):
        spike = g.abs() > bound
        spikes.append(spike.sum())
        # nan_to_num: a skipped tensor's NaN/Inf entries become 0 so that "times 0" below really is 0.
        clipped_g.append(torch.where(spike, g * r, g).nan_to_num_(0.0, 0.0, 0.0))
    spike_counts = all_reduce_per_tensor(torch.stack(spikes), shard_groups, "sum")

    norm_sq = torch.stack(torch._foreach_norm(clipped_g)).square()
    norm = all_reduce_per_tensor(norm_sq, shard_groups, "sum").sqrt()
    norm_ema = stack(st.norm_ema for st in states) * h.gamma1 + norm * (1 - h.gamma1)
    norm_sq_ema = stack(st.norm_sq_ema for st in states) * h.gamma2 + norm.square() * (1 - h.gamma2)
    target = (norm_ema / (1 - torch.pow(h.gamma1, n_c))) / (
        (norm_sq_ema / (1 - torch.pow(h.gamma2, n_c))).sqrt() + h.eps)
    scale = torch.where(ok, torch.where(norm > 0, target / norm, 1.0), 0.0)
    g_ = torch._foreach_mul(clipped_g, list(scale.unbind()))

    m_, v_ = [st.exp_avg for st in states], [st.exp_avg_sq for st in states]
    # ``reset`` is a host bool of the schedule, not a tensor value: branching on it reads nothing.
    for m, v, reset in zip(m_, v_, resets):
        if reset:
            m.zero_()
            v.zero_()
    n = n_c - 1
    if any(resets):
        n = torch.stack([c.new_zeros(()) if reset else c for c, reset in zip(n.unbind(), resets)])
    n_new = torch.where(ok, n + 1, n)
    torch._foreach_mul_(m_, list(torch.where(ok, h.beta1, 1.0).unbind()))
    torch._foreach_add_(m_, g_, alpha=1 - h.beta1)
    torch._foreach_mul_(v_, list(torch.where(ok, h.beta2, 1.0).unbind()))
    torch._foreach_addcmul_(v_, g_, g_, value=1 - h.beta2)

    # A tensor that does not move keeps a count of 0 at its first step or a reset: its bias corrections would
    # be 0, and its update 0 · (m / 0) = NaN, which no zero multiplier clears. It takes those of step 1.
    n_bias = torch.where(ok, n_new, torch.ones_like(n_new))
    bias1 = 1 - torch.pow(h.beta1, n_bias)
    bias2_sqrt = (1 - torch.pow(h.beta2, n_bias)).sqrt()
    denom = torch._foreach_div(torch._foreach_sqrt(v_), list(bias2_sqrt.unbind()))
    torch._foreach_add_(denom, h.eps)
    updates = torch._foreach_div(m_, denom)
    torch._foreach_mul_(updates, list(torch.where(ok, -h.lr / bias1, 0.0).unbind()))
    decay = list(torch.where(ok, 1 - h.lr * h.weight_decay, 1.0).unbind())

    # Low-precision parameters are updated in float32 and rounded once.
    p32 = [p if p.dtype == torch.float32 else p.float() for p in params]
    torch._foreach_mul_(p32, decay)
    torch._foreach_add_(p32, updates)
    for p, q in zip(params, p32):
        if p is not q:
            p.copy_(q)

    new_scalars = (n_new, torch.where(ok, max_ema, stack(st.max_ema for st in states)),
                   torch.where(ok, norm_ema, stack(st.norm_ema for st in states)),
                   torch.where(ok, norm_sq_ema, stack(st.norm_sq_ema for st in states)))
    for field, values in zip(("step", "max_ema", "norm_ema", "norm_sq_ema"), new_scalars):
        torch._foreach_copy_([getattr(st, field) for st in states], list(values.unbind()))
    clipped = list(torch.where(ok, spike_counts, 0).unbind())
    return KernelResult(clipped, list((~finite).unbind()))
