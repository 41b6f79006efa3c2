"""Functional Stable-SPAM kernels: the single-tensor reference and the multi-tensor (``foreach``) path.

The optimizer class owns the schedule (global step, momentum resets, the cosine decay of beta1 and gamma1)
and hands a kernel one param group's tensors plus the scalars of this step. Per tensor a kernel applies
AdaClip, AdaGN, then Adam with decoupled weight decay, in the order of the authors' code:

    n_c = n + 1                                        # count of AdaClip and AdaGN at this step
    A = theta A + (1 - theta) max|g|;  A^ = A / (1 - theta^n_c)
    g = where(|g| > A^, g * A^ / max|g|, g)            # AdaClip
    M = gamma1 M + (1 - gamma1) |g|;  V = gamma2 V + (1 - gamma2) |g|^2      (|g|: 2-norm, after AdaClip)
    g = g / |g| * (M / (1 - gamma1^n_c)) / (sqrt(V / (1 - gamma2^n_c)) + eps)  # AdaGN
    if reset: m = v = 0; n = 0                         # MoRet, before the moments are used
    n += 1  (so n = 1 right after a reset, n_c otherwise)
    m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
    p = p (1 - lr wd) - lr / (1 - beta1^n) * m / (sqrt(v) / sqrt(1 - beta2^n) + eps)

Everything is decided on device (no host sync): a tensor whose gradient holds NaN/Inf, or every tensor
when ``gate`` is False, keeps its parameter and state (a due reset still zeroes the moments: resets belong
to the schedule, not to the update). State is float32 whatever the parameter dtype; the per-tensor scalars
(``n``, ``A``, ``M``, ``V``) are 0-dim float32 tensors on the parameter's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# Per tensor: the process groups across which its shards are spread (FSDP2), () for an unsharded tensor.
ShardGroups = tuple[object, ...]


@dataclass(frozen=True)
class StepScalars:
    """The host scalars of one step for one param group; ``beta1``/``gamma1`` already carry the decay."""

    lr: float
    beta1: float
    beta2: float
    gamma1: float
    gamma2: float
    theta: float
    eps: float
    weight_decay: float


@dataclass
class TensorState:
    """One parameter's Stable-SPAM state, as the kernels read and write it."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor  # n: the per-tensor count, restarted at each reset
    max_ema: Tensor  # A: EMA of max|g| (AdaClip)
    norm_ema: Tensor  # M: EMA of the gradient norm (AdaGN)
    norm_sq_ema: Tensor  # V: EMA of the squared gradient norm (AdaGN)


@dataclass
class KernelResult:
    clipped: list[Tensor]  # int64 0-dim per parameter: entries AdaClip scaled down
    nonfinite: list[Tensor]  # bool 0-dim per parameter: gradient held NaN/Inf, update skipped


def _all_reduce(value: Tensor, groups: ShardGroups, op: str) -> Tensor:
    """Combine a per-shard statistic into the full tensor's (collective on device, no host sync)."""
    if not groups:
        return value
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    for group in groups:
        dist.all_reduce(value, op=reduce_op, group=group)
    return value


def _abs_max(g: Tensor) -> Tensor:
    # An FSDP shard may be empty, and an empty tensor has no max.
    return g.abs().amax() if g.numel() else g.new_zeros(())


def stable_spam_reference(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[TensorState],
    resets: list[bool],
    shard_groups: list[ShardGroups],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """One tensor at a time, the rule above written out: the oracle the other paths are tested against."""
    clipped, nonfinite = [], []
    for p, grad, st, reset, groups in zip(params, grads, states, resets, shard_groups):
        g = grad.float()
        amax = _all_reduce(_abs_max(g), groups, "max")
        finite = torch.isfinite(amax)
        ok = finite if gate is None else finite & gate
        n_c = st.step + 1

        max_ema = st.max_ema * h.theta + amax * (1 - h.theta)
        max_hat = max_ema / (1 - torch.pow(h.theta, n_c))
        spike = g.abs() > max_hat
        g = torch.where(spike, g * (max_hat / amax), g)
        clipped.append(torch.where(ok, _all_reduce(spike.sum(), groups, "sum"), 0))
        nonfinite.append(~finite)

        norm = _all_reduce(g.square().sum(), groups, "sum").sqrt()
        norm_ema = st.norm_ema * h.gamma1 + norm * (1 - h.gamma1)
        norm_sq_ema = st.norm_sq_ema * h.gamma2 + norm.square() * (1 - h.gamma2)
        target = (norm_ema / (1 - torch.pow(h.gamma1, n_c))) / (
            (norm_sq_ema / (1 - torch.pow(h.gamma2, n_c))).sqrt() + h.eps)
        g = g * torch.where(norm > 0, target / norm, 1.0)

        m, v, n = st.exp_avg, st.exp_avg_sq, st.step
        if reset:
            m, v, n = torch.zeros_like(m), torch.zeros_like(v), torch.zeros_like(n)
        n_new = n + 1
        m_new = m * h.beta1 + g * (1 - h.beta1)
        v_new = v * h.beta2 + g * g * (1 - h.beta2)
        bias1 = 1 - torch.pow(h.beta1, n_new)
        bias2 = 1 - torch.pow(h.beta2, n_new)
        p32 = p.float()
        denom = v_new.sqrt() / bias2.sqrt() + h.eps
        p_new = p32 * (1 - h.lr * h.weight_decay) - (h.lr / bias1) * m_new / denom

        st.exp_avg.copy_(torch.where(ok, m_new, m))
        st.exp_avg_sq.copy_(torch.where(ok, v_new, v))
        st.step.copy_(torch.where(ok, n_new, n))
        st.max_ema.copy_(torch.where(ok, max_ema, st.max_ema))
        st.norm_ema.copy_(torch.where(ok, norm_ema, st.norm_ema))
        st.norm_sq_ema.copy_(torch.where(ok, norm_sq_ema, st.norm_sq_ema))
        p.copy_(torch.where(ok, p_new, p32))
    return KernelResult(clipped, nonfinite)


def _reduce_vector(values: Tensor, shard_groups: Sequence[ShardGroups], op: str) -> Tensor:
    """``_all_reduce`` for a vector of per-tensor statistics: one collective per distinct set of groups."""
    by_groups: dict[ShardGroups, list[int]] = {}
    for i, groups in enumerate(shard_groups):
        if groups:
            by_groups.setdefault(groups, []).append(i)
    for groups, positions in by_groups.items():
        index = torch.tensor(positions, device=values.device)
        values = values.index_copy(0, index, _all_reduce(values.index_select(0, index), groups, op))
    return values


def stable_spam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[TensorState],
    resets: list[bool],
    shard_groups: list[ShardGroups],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """The per-tensor scalars of a group as one vector each, and the moment/parameter updates as
    ``torch._foreach_*`` ops. A skipped tensor gets multipliers of 1 and increments of exactly 0, which
    leaves its values bit-identical without a per-tensor branch."""
    g32 = [g.float() for g in grads]
    stack = lambda ts: torch.stack(list(ts))
    amax = _reduce_vector(stack(_abs_max(g) for g in g32), shard_groups, "max")
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
    spike_counts = _reduce_vector(torch.stack(spikes), shard_groups, "sum")

    norm = _reduce_vector(torch.stack(torch._foreach_norm(clipped_g)).square(), shard_groups, "sum").sqrt()
    norm_ema = stack(st.norm_ema for st in states) * h.gamma1 + norm * (1 - h.gamma1)
    norm_sq_ema = stack(st.norm_sq_ema for st in states) * h.gamma2 + norm.square() * (1 - h.gamma2)
    target = (norm_ema / (1 - torch.pow(h.gamma1, n_c))) / (
        (norm_sq_ema / (1 - torch.pow(h.gamma2, n_c))).sqrt() + h.eps)
    scale = torch.where(ok, torch.where(norm > 0, target / norm, 1.0), 0.0)
    g_ = torch._foreach_mul(clipped_g, list(scale.unbind()))

    m_, v_ = [st.exp_avg for st in states], [st.exp_avg_sq for st in states]
    reset_mask = torch.tensor(resets, device=amax.device)
    for m, v, reset in zip(m_, v_, resets):
        if reset:
            m.zero_()
            v.zero_()
    n = torch.where(reset_mask, 0.0, n_c - 1)
    n_new = torch.where(ok, n + 1, n)
    torch._foreach_mul_(m_, list(torch.where(ok, h.beta1, 1.0).unbind()))
    torch._foreach_add_(m_, g_, alpha=1 - h.beta1)
    torch._foreach_mul_(v_, list(torch.where(ok, h.beta2, 1.0).unbind()))
    torch._foreach_addcmul_(v_, g_, g_, value=1 - h.beta2)

    bias1 = 1 - torch.pow(h.beta1, n_new)
    bias2_sqrt = (1 - torch.pow(h.beta2, n_new)).sqrt()
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
