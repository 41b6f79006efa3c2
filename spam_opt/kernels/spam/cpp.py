"""The C++ SPAM kernels for CPU tensors (``torch.ops.spam_opt.spam_step_``, ``spam_step8_``): one pass, a
group per call.

torch.compile's CPU code for the step made two passes per tensor and paid Python overhead per parameter;
the C++ op clips, updates and counts in one read of p, g, m and v. ``spam_step8_`` does the same on 8-bit
moments, dequantizing and requantizing each block in that pass. ``spam_opt.kernels.cpp_ops`` builds and
loads them; ``spam_opt.kernels.dispatch`` calls this only once they have loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.cpp_ops import optimizer_ops_take
from spam_opt.kernels.draw import kept_bitmap
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.state.kept import KeptEntries, per_draw


def _kept_bits(kept: KeptEntries, numel: int) -> Tensor:
    """The bitmap of ``kept`` that ``spam_step_`` reads (1 bit per entry), once per draw: the kernel's vector
    compress and expand need the bits, and building them at every step cost more than the rest of the step."""
    return per_draw(kept, "bits", lambda k: kept_bitmap(k, numel))


def _path(p: Tensor, g: Tensor, st: Any) -> str:
    if isinstance(st, QuantizedTensorState):
        return "8bit" if optimizer_ops_take(p, g, p) else "other"
    return "32bit" if optimizer_ops_take(p, g, st.exp_avg) else "other"


def spam_cpp(params: list[Tensor], grads: list[Tensor], states: list[TensorState | QuantizedTensorState],
             gate: Tensor | None, h: StepScalars) -> KernelResult:
    """The group's float32 contiguous tensors in one op call per state layout; any others (bf16, strided)
    through foreach."""
    positions: dict[str, list[int]] = {"32bit": [], "8bit": [], "other": []}
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        positions[_path(p, g, st)].append(i)
    clip = float("inf") if h.clip_threshold is None else h.clip_threshold
    scalars = (h.lr * h.warmup_scale, h.beta1, h.beta2, h.eps, 1 - h.lr * h.weight_decay, clip,
               -1.0 if h.maximize else 1.0)
    parts: list[tuple[list[int], KernelResult]] = []
    if positions["32bit"]:
        fast = positions["32bit"]
        sts = [states[i] for i in fast]
        c, f = torch.ops.spam_opt.spam_step_(
            [params[i] for i in fast], [grads[i] for i in fast], [st.exp_avg for st in sts],
            [st.exp_avg_sq for st in sts], [st.step for st in sts],
            [None if st.kept is None else _kept_bits(st.kept, params[i].numel()) for i, st in zip(fast, sts)],
            [None if st.kept is None else st.kept.starts for st in sts], gate, *scalars)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if positions["8bit"]:
        fast = positions["8bit"]
        qs = [states[i].moments for i in fast]
        c, f = torch.ops.spam_opt.spam_step8_(
            [params[i] for i in fast], [grads[i] for i in fast], [q.exp_avg for q in qs],
            [q.exp_avg_sq for q in qs], [q.exp_avg_scale for q in qs], [q.exp_avg_sq_scale for q in qs],
            [states[i].step for i in fast], [q.kept_bits for q in qs], [q.row_length for q in qs], gate,
            *scalars)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if positions["other"]:
        slow = positions["other"]
        parts.append((slow, spam_foreach([params[i] for i in slow], [grads[i] for i in slow],
                                         [states[i] for i in slow], gate, h)))
    return KernelResult.merge(len(params), parts)
