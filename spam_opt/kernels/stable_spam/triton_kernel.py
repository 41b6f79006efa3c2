"""The Triton Stable-SPAM step: three kernel launches per dense float32 parameter, whatever its size.

Stable-SPAM's update needs two statistics of the whole tensor before it can touch an entry: AdaClip's
max|g| and AdaGN's norm of the clipped gradient, which depends on the first. So each parameter takes
three passes over g, each a kernel: (1) max|g| and the count of NaN/Inf entries, (2) the clipped
gradient's sum of squares and the count of clipped entries, (3) the update of p, m and v. Between them
the per-tensor scalars of the whole group (EMAs, bias corrections, reset, gate) are a few torch ops on
vectors, so a group costs 3 launches per parameter plus a fixed number of ops. The reductions write one
partial result per program and torch reduces them in a fixed order: a step is deterministic, and resume
is bit-exact.

It takes unsharded float32 parameters with float32 gradients, contiguous, with float32 moments; the others
(8-bit moments, low-precision, strided or FSDP2-sharded tensors) go to ``fallback``. Without a GPU the
kernels run on CPU tensors in Triton's interpreter, as the tests run them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import device_flags, with_fallback
from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.kernels.stable_spam.inputs import StepScalars, TensorState
from spam_opt.kernels.triton_steps import BLOCK, REDUCTION_PROGRAMS, programs

# Rows of the per-tensor scalars the update kernel reads: one column per parameter.
_MAX_HAT, _RATIO, _SCALE, _RESET, _OK, _STEP, _BIAS2_SQRT = range(7)


@functools.cache
def _kernels() -> Any:
    """The jitted kernels, built on first use so that importing spam_opt never imports triton."""
    import triton
    import triton.language as tl

    # Sizes and positions vary per parameter: specializing on them would compile a variant for each kind.
    @triton.jit(do_not_specialize=["index", "numel"])
    def abs_max(g_ptr, amax_ptr, bad_ptr, index, numel, BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):
        """Partial max|g| over the finite entries, and the count of the others, of this program's share."""
        pid = tl.program_id(0)
        top = tl.zeros([BLOCK], tl.float32)
        bad = tl.zeros([BLOCK], tl.int32)
        for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            a = tl.abs(tl.load(g_ptr + offsets, mask=offsets < numel, other=0.0))
            finite = a < float("inf")  # NaN compares False too
            top = tl.maximum(top, tl.where(finite, a, 0.0))
            bad += (~finite).to(tl.int32)
        tl.store(amax_ptr + index * PROGRAMS + pid, tl.max(top, axis=0))
        tl.store(bad_ptr + index * PROGRAMS + pid, tl.sum(bad, axis=0))

    @triton.jit(do_not_specialize=["index", "n_params", "numel"])
    def clipped_square_sum(g_ptr, scalars_ptr, sums_ptr, spikes_ptr, index, n_params, numel,
                           BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):
        """Partial sum of squares of the AdaClip-clipped gradient, and the count of clipped entries."""
        pid = tl.program_id(0)
        max_hat = tl.load(scalars_ptr + 0 * n_params + index)
        ratio = tl.load(scalars_ptr + 1 * n_params + index)
        total = tl.zeros([BLOCK], tl.float32)
        spikes = tl.zeros([BLOCK], tl.int32)
        for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            g = tl.load(g_ptr + offsets, mask=offsets < numel, other=0.0)
            spike = tl.abs(g) > max_hat
            g = tl.where(spike, g * ratio, g)
            total += g * g
            spikes += spike.to(tl.int32)
        tl.store(sums_ptr + index * PROGRAMS + pid, tl.sum(total, axis=0))
        tl.store(spikes_ptr + index * PROGRAMS + pid, tl.sum(spikes, axis=0))

    @triton.jit(do_not_specialize=["index", "n_params", "numel"])
    def update(p_ptr, g_ptr, m_ptr, v_ptr, scalars_ptr, index, n_params, numel, decay, beta1, beta2, eps,
               BLOCK: tl.constexpr):
        """Clip, normalise, reset, then the Adam update with decoupled decay, where the tensor moves."""
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < numel
        # Per-tensor scalars as blocks: the interpreter does not combine a scalar comparison with a block's.
        zero = tl.zeros([BLOCK], tl.float32)
        max_hat = tl.load(scalars_ptr + 0 * n_params + index)
        ratio = tl.load(scalars_ptr + 1 * n_params + index)
        scale = tl.load(scalars_ptr + 2 * n_params + index)
        reset = zero + tl.load(scalars_ptr + 3 * n_params + index) > 0.5
        ok = zero + tl.load(scalars_ptr + 4 * n_params + index) > 0.5
        step = tl.load(scalars_ptr + 5 * n_params + index)
        bias2_sqrt = tl.load(scalars_ptr + 6 * n_params + index)
        g = tl.load(g_ptr + offsets, mask=inside, other=0.0)
        g = tl.where(tl.abs(g) > max_hat, g * ratio, g) * scale
        m = tl.where(reset, 0.0, tl.load(m_ptr + offsets, mask=inside, other=0.0))
        v = tl.where(reset, 0.0, tl.load(v_ptr + offsets, mask=inside, other=0.0))
        p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
        m_new = m * beta1 + g * (1 - beta1)
        v_new = v * beta2 + g * g * (1 - beta2)
        p_new = p * decay - step * tl.div_rn(m_new, tl.div_rn(tl.sqrt_rn(v_new), bias2_sqrt) + eps)
        tl.store(p_ptr + offsets, tl.where(ok, p_new, p), mask=inside)
        tl.store(m_ptr + offsets, tl.where(ok, m_new, m), mask=inside)
        tl.store(v_ptr + offsets, tl.where(ok, v_new, v), mask=inside)

    return abs_max, clipped_square_sum, update


def takes(p: Tensor, g: Tensor, state: Any) -> bool:
    """Whether the Triton step takes this parameter (the others go to the fallback)."""
    return (isinstance(state, TensorState) and not state.shard_groups and p.numel() > 0
            and p.dtype == torch.float32 and g.dtype == torch.float32 and p.is_contiguous()
            and g.is_contiguous() and state.exp_avg.is_contiguous() and state.exp_avg_sq.is_contiguous())


def _reduction_grid(numel: int) -> tuple[int]:
    return programs(numel, REDUCTION_PROGRAMS)


def _triton_step(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
                 h: StepScalars) -> KernelResult:
    device = params[0].device
    n = len(params)
    abs_max, clipped_square_sum, update = _kernels()
    stack = lambda field: torch.stack([getattr(st, field) for st in states])
    partial = lambda dtype: torch.zeros(n, REDUCTION_PROGRAMS, dtype=dtype, device=device)

    amax_parts, bad_parts = partial(torch.float32), partial(torch.int32)
    for i, (p, g) in enumerate(zip(params, grads)):
        abs_max[_reduction_grid(p.numel())](g, amax_parts, bad_parts, i, p.numel(), BLOCK=BLOCK,
                                            PROGRAMS=REDUCTION_PROGRAMS)
    amax, finite = amax_parts.amax(1), bad_parts.sum(1) == 0
    ok = finite if gate is None else finite & gate.to(device)
    n_prev, max_ema, norm_ema, norm_sq_ema = map(stack, ("step", "max_ema", "norm_ema", "norm_sq_ema"))
    n_c = n_prev + 1
    a_new = max_ema * h.theta + amax * (1 - h.theta)
    max_hat = a_new / (1 - torch.pow(h.theta, n_c))
    scalars = torch.zeros(7, n, dtype=torch.float32, device=device)
    scalars[_MAX_HAT], scalars[_RATIO] = max_hat, max_hat / amax

    sum_parts, spike_parts = partial(torch.float32), partial(torch.int32)
    for i, (p, g) in enumerate(zip(params, grads)):
        clipped_square_sum[_reduction_grid(p.numel())](g, scalars, sum_parts, spike_parts, i, n, p.numel(),
                                                       BLOCK=BLOCK, PROGRAMS=REDUCTION_PROGRAMS)
    norm = sum_parts.sum(1).sqrt()
    m_ema = norm_ema * h.gamma1 + norm * (1 - h.gamma1)
    v_ema = norm_sq_ema * h.gamma2 + norm.square() * (1 - h.gamma2)
    target = (m_ema / (1 - torch.pow(h.gamma1, n_c))) / (
        (v_ema / (1 - torch.pow(h.gamma2, n_c))).sqrt() + h.eps)
    resets = device_flags([st.reset for st in states], device)
    n0 = torch.where(resets, 0.0, n_prev)
    n_new = n0 + 1
    scalars[_SCALE] = torch.where(norm > 0, target / norm, 1.0)
    scalars[_RESET], scalars[_OK] = resets.float(), ok.float()
    scalars[_STEP] = h.lr / (1 - torch.pow(h.beta1, n_new))
    scalars[_BIAS2_SQRT] = (1 - torch.pow(h.beta2, n_new)).sqrt()
    decay = 1 - h.lr * h.weight_decay
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        update[programs(p.numel())](p, g, st.exp_avg, st.exp_avg_sq, scalars, i, n, p.numel(), decay, h.beta1,
                                    h.beta2, h.eps, BLOCK=BLOCK)

    new_scalars = (torch.where(ok, n_new, n0), torch.where(ok, a_new, max_ema),
                   torch.where(ok, m_ema, norm_ema), torch.where(ok, v_ema, norm_sq_ema))
    for field, values in zip(("step", "max_ema", "norm_ema", "norm_sq_ema"), new_scalars):
        torch._foreach_copy_([getattr(st, field) for st in states], list(values.unbind()))
    clipped = torch.where(ok, spike_parts.sum(1, dtype=torch.int64), 0)
    return KernelResult(list(clipped.unbind()), list((~finite).unbind()))


def stable_spam_triton_with(fallback: Kernel) -> Kernel:
    """The Triton step for the parameters it takes (see ``takes``), ``fallback`` for the others."""

    def stable_spam_triton(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                           h: StepScalars) -> KernelResult:
        return with_fallback((takes(p, g, st) for p, g, st in zip(params, grads, states)), _triton_step,
                             fallback, params, grads, states, gate, h)

    return stable_spam_triton
