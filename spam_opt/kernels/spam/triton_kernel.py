"""The Triton SPAM step: one kernel launch per dense float32 parameter, every entry read and written once.

On a GPU the foreach step is launch-bound (about 20 small ops per parameter, benchmarks/results/
gpu_run.md). Here each parameter's whole rule (finite check, spike clip, moments, bias-corrected update,
decoupled decay) is one pass over p, g, m and v in registers, the 28 bytes per entry of fused AdamW, and its
clip and NaN/Inf counts are added on the device. A group costs one launch per parameter plus a handful of
ops for the bias corrections and the counts, whatever its size; nothing is read on the host.

It takes float32 parameters with float32 gradients, contiguous, with dense float32 moments. The others
(sparse momentum, 8-bit moments, low-precision or strided tensors) go to ``fallback``: the compiled step
on CUDA. Without a GPU the kernel runs on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set
before triton is imported), which is how the tests check it against the float64 references.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import with_fallback
from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.kernels.spam.inputs import StepScalars, TensorState
from spam_opt.kernels.triton_steps import BLOCK, programs


@functools.cache
def _kernel() -> Any:
    """The jitted kernel, built on first use so that importing spam_opt never imports triton."""
    import triton
    import triton.language as tl

    # Sizes and positions vary per parameter: specializing on them would compile a variant for each kind.
    @triton.jit(do_not_specialize=["index", "n_params", "numel"])
    def spam_dense_step(p_ptr, g_ptr, m_ptr, v_ptr, step_size_ptr, gate_ptr, counts_ptr, index, n_params,
                        numel, decay, clip, sign, beta1, beta2, eps, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < numel
        step_size = tl.load(step_size_ptr + index)
        # As a block: the interpreter does not combine a scalar comparison with a block's in `&`.
        gate = tl.zeros([BLOCK], tl.float32) + tl.load(gate_ptr) > 0.5
        g = tl.load(g_ptr + offsets, mask=inside, other=0.0) * sign
        m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
        finite = tl.abs(g) < float("inf")  # NaN compares False too
        moves = finite & gate
        # clip is +inf when clipping is off at this step: nothing compares above it (nor above NaN, v == 0).
        threshold = clip * v
        spike = finite & (v > 0) & (g * g > threshold)
        g = tl.where(spike, tl.where(g < 0, -1.0, 1.0) * tl.sqrt_rn(threshold), g)
        m_new = tl.where(moves, m * beta1 + g * (1 - beta1), m)
        v_new = tl.where(moves, v * beta2 + g * g * (1 - beta2), v)
        update = step_size * tl.div_rn(m_new, tl.sqrt_rn(v_new) + eps)
        tl.store(p_ptr + offsets, tl.where(moves, (p - update) * decay, p), mask=inside)
        tl.store(m_ptr + offsets, m_new, mask=inside)
        tl.store(v_ptr + offsets, v_new, mask=inside)
        # Spikes and NaN/Inf entries are rare: most programs add nothing, so the atomics rarely contend.
        spikes = tl.sum((spike & gate & inside).to(tl.int32), axis=0)
        if spikes > 0:
            tl.atomic_add(counts_ptr + index, spikes)
        bad = tl.sum((~finite & inside).to(tl.int32), axis=0)
        if bad > 0:
            tl.atomic_add(counts_ptr + n_params + index, bad)

    return spam_dense_step


def takes(p: Tensor, g: Tensor, state: Any) -> bool:
    """Whether the Triton step takes this parameter (the others go to the fallback)."""
    return (isinstance(state, TensorState) and state.kept is None and p.dtype == torch.float32
            and g.dtype == torch.float32 and p.is_contiguous() and g.is_contiguous()
            and state.exp_avg.is_contiguous() and state.exp_avg_sq.is_contiguous())


def _triton_step(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
                 h: StepScalars) -> KernelResult:
    device = params[0].device
    n = len(params)
    open_ = torch.ones((), dtype=torch.float32, device=device) if gate is None else gate.to(device).float()
    counts = [st.step for st in states]
    n1 = torch.stack(counts) + 1  # the count of this step's bias corrections
    step_sizes = h.lr * h.warmup_scale * (1 - torch.pow(h.beta2, n1)).sqrt() / (1 - torch.pow(h.beta1, n1))
    # Row 0: entries clipped; row 1: NaN/Inf gradient entries; one row entry per parameter.
    found = torch.zeros(2, n, dtype=torch.int32, device=device)
    decay = 1 - h.lr * h.weight_decay
    clip = math.inf if h.clip_threshold is None else h.clip_threshold
    sign = -1.0 if h.maximize else 1.0
    kernel = _kernel()
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        numel = p.numel()
        if numel == 0:
            continue
        kernel[programs(numel)](p, g, st.exp_avg, st.exp_avg_sq, step_sizes, open_, found, i, n, numel,
                                      decay, clip, sign, h.beta1, h.beta2, h.eps, BLOCK=BLOCK)
    torch._foreach_add_(counts, [open_] * n)
    clipped = found[0].long().unbind()
    nonfinite = ((found[1] > 0) & (open_ > 0.5)).unbind()
    return KernelResult(list(clipped), list(nonfinite))


def spam_triton_with(fallback: Kernel) -> Kernel:
    """The Triton step for the parameters it takes (see ``takes``), ``fallback`` for the others."""

    def spam_triton(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                    h: StepScalars) -> KernelResult:
        return with_fallback((takes(p, g, st) for p, g, st in zip(params, grads, states)), _triton_step,
                             fallback, params, grads, states, gate, h)

    return spam_triton
