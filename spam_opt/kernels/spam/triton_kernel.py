"""The Triton SPAM step: one kernel launch per parameter, every entry read and written once.

On a GPU the foreach step is launch-bound (about 20 small ops per parameter, 80 with 8-bit moments:
benchmarks/results/optimizer_launches.md). Here each parameter's whole rule (finite check, spike clip,
moments, bias-corrected update, decoupled decay) is one pass over p, g and the moments in registers (28
bytes per entry with float32 moments, as fused AdamW; 8-bit moments dequantized and requantized per block
in the same pass), and its clip and NaN/Inf counts are added on the device. A group costs one launch per
parameter plus a fixed number of ops for the bias corrections and the counts; nothing is read on the host.

It takes contiguous parameters in float32, bfloat16 or float16 (stepped in float32 and rounded once, as the
other paths do), with gradients in float32 or the parameter's dtype, and every moment layout: float32 or
8-bit moments, dense or sparse. Under sparse momentum a program takes a span of the parameter as in the
dense case, finds its kept entries in the bitmap and their moments (stored contiguously in flat order) from
the count of kept entries before the span, both built once per draw; the other entries take the decay.
Strided and float64 tensors go to ``fallback``: the compiled step on CUDA. Without a GPU the kernels run on
CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how the
tests check them against the float64 references.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.draw import kept_bitmap
from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.kernels.triton_steps import BLOCK, programs, steps_in_float32, with_triton
from spam_opt.state.kept import kept_before, per_draw
from spam_opt.state.quantized import BLOCK as QBLOCK
from spam_opt.state.quantized import QuantizedMoments, block_count, block_starts, blocks_per_row


@functools.cache
def _kernels() -> Any:
    """The jitted kernels (float32, 8-bit and sparse moments), imported on first use so that importing
    spam_opt never imports triton."""
    from spam_opt.kernels.spam import triton_jit

    return triton_jit.spam_float32_step, triton_jit.spam_8bit_step


def takes(p: Tensor, g: Tensor, state: Any) -> bool:
    """Whether the Triton step takes this parameter (the others go to the fallback): contiguous float32,
    bfloat16 or float16 parameters and gradients (see ``steps_in_float32``), with contiguous float32 moments
    or 8-bit ones, dense or sparse."""
    if not steps_in_float32(p, g):
        return False
    if isinstance(state, QuantizedTensorState):
        return True
    return (isinstance(state, TensorState) and state.exp_avg.is_contiguous()
            and state.exp_avg_sq.is_contiguous())


def _kept_moments(st: TensorState, numel: int) -> tuple[Tensor, Tensor]:
    """The float32 kernel's ``bits`` and ``starts`` under sparse momentum: the kept entries' bitmap (shared
    with the C++ step) and the kept entries before each program's ``BLOCK``, both built once per draw. A
    dense parameter has neither: any tensor stands in, unread."""
    if st.kept is None:
        return st.exp_avg, st.exp_avg
    bits = per_draw(st.kept, "bits", functools.partial(kept_bitmap, numel=numel))
    return bits, per_draw(st.kept, "starts per Triton block", lambda _: kept_before(bits, numel, BLOCK))


def _kept_codes(q: QuantizedMoments, numel: int) -> tuple[Tensor, Tensor]:
    """The 8-bit kernel's ``bits`` and ``starts`` under sparse momentum: the bitmap, and where each block's
    codes start (built once per draw). A dense parameter has neither: any tensor stands in, unread."""
    if q.kept_bits is None:
        return q.exp_avg_scale, q.exp_avg_scale
    starts = per_draw(q.kept_bits, "block starts", functools.partial(block_starts, numel=numel,
                                                                     row_length=q.row_length))
    return q.kept_bits, starts


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
    float32, quantized = _kernels()
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        numel = p.numel()
        if numel == 0:
            continue
        if isinstance(st, QuantizedTensorState):
            q = st.moments
            quantized[(block_count(numel, q.row_length),)](
                p, g, q.exp_avg, q.exp_avg_sq, q.exp_avg_scale, q.exp_avg_sq_scale, *_kept_codes(q, numel),
                step_sizes, open_, found, i, n, q.row_length, blocks_per_row(q.row_length), decay, clip, sign,
                h.beta1, h.beta2, h.eps, QBLOCK=QBLOCK, SPARSE=q.kept_bits is not None)
        else:
            float32[programs(numel)](p, g, st.exp_avg, st.exp_avg_sq, *_kept_moments(st, numel), step_sizes,
                                     open_, found, i, n, numel, decay, clip, sign, h.beta1, h.beta2, h.eps,
                                     BLOCK=BLOCK, SPARSE=st.kept is not None)
    torch._foreach_add_(counts, [open_] * n)
    clipped = found[0].long().unbind()
    nonfinite = ((found[1] > 0) & (open_ > 0.5)).unbind()
    return KernelResult(list(clipped), list(nonfinite))


def spam_triton_with(fallback: Kernel) -> Kernel:
    """The Triton step for the parameters it takes (see ``takes``), ``fallback`` for the others."""
    return with_triton(takes, _triton_step, fallback)
