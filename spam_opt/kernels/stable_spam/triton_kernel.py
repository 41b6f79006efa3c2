"""The Triton Stable-SPAM step: three kernel launches per parameter, whatever its size.

Stable-SPAM's update needs two statistics of the whole tensor before it can touch an entry: AdaClip's
max|g| and AdaGN's norm of the clipped gradient, which depends on the first. So each parameter takes
three passes over g, each a kernel: (1) max|g| and the count of NaN/Inf entries, (2) the clipped
gradient's sum of squares and the count of clipped entries, (3) the update of p, m and v. Between them
the per-tensor scalars of the whole group (EMAs, bias corrections, reset, gate) are a few torch ops on
vectors, so a group costs 3 launches per parameter plus a fixed number of ops. The reductions write one
partial result per program and torch reduces them in a fixed order: a step is deterministic, and resume
is bit-exact.

It takes unsharded contiguous parameters in float32, bfloat16 or float16 (stepped in float32 and rounded
once, as the other paths do), with gradients in float32 or the parameter's dtype, and float32 or 8-bit
moments (the update then dequantizes and requantizes a block of them per program); the others (strided,
float64 or FSDP2-sharded tensors) go to ``fallback``. Without a GPU the kernels run on CPU tensors in Triton's
interpreter, as the tests run them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import device_flags
from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.kernels.stable_spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.kernels.triton_steps import BLOCK, REDUCTION_PROGRAMS, programs, steps_in_float32, with_triton
from spam_opt.state.quantized import BLOCK as QBLOCK
from spam_opt.state.quantized import block_count, blocks_per_row

# Rows of the per-tensor scalars the update kernel reads: one column per parameter.
_MAX_HAT, _RATIO, _SCALE, _RESET, _OK, _STEP, _BIAS2_SQRT, _STORE_CODES = range(8)


@functools.cache
def _kernels() -> Any:
    """The jitted kernels, imported on first use so that importing spam_opt never imports triton."""
    from spam_opt.kernels.stable_spam import triton_jit

    return triton_jit.abs_max, triton_jit.clipped_square_sum, triton_jit.update, triton_jit.update_8bit


def takes(p: Tensor, g: Tensor, state: Any) -> bool:
    """Whether the Triton step takes this parameter (the others go to the fallback): unsharded, contiguous
    float32, bfloat16 or float16 parameters and gradients (see ``steps_in_float32``), with moments in
    float32 or 8 bits."""
    if p.numel() == 0 or not steps_in_float32(p, g) or state.shard_groups:
        return False
    if isinstance(state, QuantizedTensorState):
        return True
    return state.exp_avg.is_contiguous() and state.exp_avg_sq.is_contiguous()


def _reduction_grid(numel: int) -> tuple[int]:
    return programs(numel, REDUCTION_PROGRAMS)


def _triton_step(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
                 h: StepScalars) -> KernelResult:
    device = params[0].device
    n = len(params)
    abs_max, clipped_square_sum, update, update_8bit = _kernels()
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
    scalars = torch.zeros(8, n, dtype=torch.float32, device=device)
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
    # 8-bit codes follow a reset even under a closed gate (the float32 moments are zeroed then too).
    if gate is None:
        scalars[_STORE_CODES].fill_(1.0)  # a fill: setting a row to a Python float makes a tensor of it first
    else:
        scalars[_STORE_CODES] = (resets | gate.to(device)).float()
    decay = 1 - h.lr * h.weight_decay
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        if isinstance(st, QuantizedTensorState):
            q = st.moments
            update_8bit[(block_count(p.numel(), q.row_length),)](
                p, g, q.exp_avg, q.exp_avg_sq, q.exp_avg_scale, q.exp_avg_sq_scale, scalars, i, n,
                q.row_length, blocks_per_row(q.row_length), decay, h.beta1, h.beta2, h.eps, QBLOCK=QBLOCK)
        else:
            update[programs(p.numel())](p, g, st.exp_avg, st.exp_avg_sq, scalars, i, n, p.numel(), decay,
                                        h.beta1, h.beta2, h.eps, BLOCK=BLOCK)

    new_scalars = (torch.where(ok, n_new, n0), torch.where(ok, a_new, max_ema),
                   torch.where(ok, m_ema, norm_ema), torch.where(ok, v_ema, norm_sq_ema))
    for field, values in zip(("step", "max_ema", "norm_ema", "norm_sq_ema"), new_scalars):
        torch._foreach_copy_([getattr(st, field) for st in states], list(values.unbind()))
    clipped = torch.where(ok, spike_parts.sum(1, dtype=torch.int64), 0)
    return KernelResult(list(clipped.unbind()), list((~finite).unbind()))


def stable_spam_triton_with(fallback: Kernel) -> Kernel:
    """The Triton step for the parameters it takes (see ``takes``), ``fallback`` for the others."""
    return with_triton(takes, _triton_step, fallback)
