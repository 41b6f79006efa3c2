"""The multi-tensor SPAM kernel: all tensors of a group per ``torch._foreach_*`` op, nothing read on the host.

It is the default path on CUDA, so it decides nothing on the host: the gate, which entries hold a NaN/Inf
gradient and the bias corrections stay on the device. An entry that does not move (a NaN/Inf gradient, or a
closed gate) gets a zero gradient and moment weights of 0, so ``lerp`` leaves its moments as they are, and a
zero update with a decay of 1, so its parameter stays bit-identical; no Python branch looks at a value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.inputs import StepScalars, TensorState


def spam_foreach(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                 h: StepScalars) -> KernelResult:
    """The rule of ``spam_reference``, a group at a time (8-bit moments: one parameter at a time)."""
    return on_float32_moments(_foreach, params, grads, states, gate, h)


def _foreach(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
             h: StepScalars) -> KernelResult:
    device = params[0].device
    open_ = torch.ones((), dtype=torch.bool, device=device) if gate is None else gate.to(device)
    exp_avgs = [st.exp_avg for st in states]
    exp_avg_sqs = [st.exp_avg_sq for st in states]
    flat = [None if st.kept is None else st.kept.indices() for st in states]
    g_ = [g.float() if idx is None else g.float().reshape(-1).index_select(0, idx)
          for g, idx in zip(grads, flat)]
    if h.maximize:
        g_ = torch._foreach_neg(g_)
    finite = [torch.isfinite(g) for g in g_]
    moves = [f & open_ for f in finite]
    nonfinite = [open_ & ~f.all() for f in finite]
    g_ = [torch.where(mv, g, 0.0) for g, mv in zip(g_, moves)]

    if h.clip_threshold is not None:
        # v is the second moment before this step's update; an entry never seen (v == 0) is not a spike, nor
        # is one that does not move (its gradient is 0 here).
        thresholds = torch._foreach_mul(exp_avg_sqs, h.clip_threshold)
        spikes = [(v > 0) & (g * g > t) for g, v, t in zip(g_, exp_avg_sqs, thresholds)]
        clipped = [spike.sum() for spike in spikes]
        g_ = [torch.where(spike, g.sign() * t.sqrt(), g) for g, spike, t in zip(g_, spikes, thresholds)]
    else:
        clipped = [torch.zeros((), dtype=torch.int64, device=device) for _ in params]

    weights = [mv.float() for mv in moves]
    torch._foreach_lerp_(exp_avgs, g_, torch._foreach_mul(weights, 1 - h.beta1))
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(g_, g_), torch._foreach_mul(weights, 1 - h.beta2))
    counts = [st.step for st in states]
    n1 = torch.stack(counts) + 1  # the count of this step's bias corrections
    step_sizes = -h.lr * h.warmup_scale * (1 - torch.pow(h.beta2, n1)).sqrt() / (1 - torch.pow(h.beta1, n1))
    torch._foreach_add_(counts, [open_.float()] * len(counts))

    denom = torch._foreach_add_(torch._foreach_sqrt(exp_avg_sqs), h.eps)
    updates = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(updates, torch._foreach_mul(weights, list(step_sizes.unbind())))

    # Decoupled weight decay acts on the updated parameter (after the Adam step), on every entry that moves;
    # under sparse momentum on the entries left out too, when the gate is open.
    decay = 1 - h.lr * h.weight_decay
    decays = None
    if decay != 1:
        decays = torch._foreach_add_(torch._foreach_mul(weights, decay - 1), 1.0)
    fp32_dense = [i for i, p in enumerate(params) if flat[i] is None and p.dtype == torch.float32]
    if fp32_dense:
        dense_p = [params[i] for i in fp32_dense]
        torch._foreach_add_(dense_p, [updates[i] for i in fp32_dense])
        if decays is not None:
            torch._foreach_mul_(dense_p, [decays[i] for i in fp32_dense])
    for i, p in enumerate(params):
        if flat[i] is None and p.dtype == torch.float32:
            continue
        # Sparse or low-precision parameters: update in float32, round once.
        p32 = p.float().reshape(-1)
        idx = flat[i]
        moved = (p32 if idx is None else p32.index_select(0, idx)) + updates[i].reshape(-1)
        if decays is not None:
            moved = moved * decays[i].reshape(-1)
        if idx is None:
            p32 = moved
        else:
            rest = p32 if decays is None else p32 * torch.where(open_, decay, 1.0)
            p32 = rest.index_copy(0, idx, moved)
        p.copy_(p32.view(p.shape))
    return KernelResult(clipped, nonfinite)
