"""The single-tensor Stable-SPAM kernel: docs/algorithm.md's rule written out, the other paths' oracle.

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

from typing import Any

import torch
from torch import Tensor

from spam_opt._distributed import all_reduce
from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.stable_spam.inputs import StepScalars, TensorState


def abs_max(g: Tensor) -> Tensor:
    # An FSDP shard may be empty, and an empty tensor has no max.
    return g.abs().amax() if g.numel() else g.new_zeros(())


def stable_spam_reference(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                          h: StepScalars) -> KernelResult:
    """One tensor at a time, the rule above written out; 8-bit moments through their float32 values."""
    return on_float32_moments(_reference, params, grads, states, gate, h)


def _reference(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
               h: StepScalars) -> KernelResult:
    clipped, nonfinite = [], []
    for p, grad, st in zip(params, grads, states):
        groups = st.shard_groups
        g = grad.float()
        amax = all_reduce(abs_max(g), groups, "max")
        finite = torch.isfinite(amax)
        ok = finite if gate is None else finite & gate
        n_c = st.step + 1

        max_ema = st.max_ema * h.theta + amax * (1 - h.theta)
        max_hat = max_ema / (1 - torch.pow(h.theta, n_c))
        spike = g.abs() > max_hat
        g = torch.where(spike, g * (max_hat / amax), g)
        clipped.append(torch.where(ok, all_reduce(spike.sum(), groups, "sum"), 0))
        nonfinite.append(~finite)

        norm = all_reduce(g.square().sum(), groups, "sum").sqrt()
        norm_ema = st.norm_ema * h.gamma1 + norm * (1 - h.gamma1)
        norm_sq_ema = st.norm_sq_ema * h.gamma2 + norm.square() * (1 - h.gamma2)
        target = (norm_ema / (1 - torch.pow(h.gamma1, n_c))) / (
            (norm_sq_ema / (1 - torch.pow(h.gamma2, n_c))).sqrt() + h.eps)
        g = g * torch.where(norm > 0, target / norm, 1.0)

        m, v, n = st.exp_avg, st.exp_avg_sq, st.step
        if st.reset:
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
