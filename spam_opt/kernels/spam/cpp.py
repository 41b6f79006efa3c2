"""The C++ SPAM kernel for CPU tensors (``torch.ops.spam_opt.spam_step_``): one pass, a group per call.

torch.compile's CPU code for the step made two passes per tensor and paid Python overhead per parameter;
the C++ op clips, updates and counts in one read of p, g, m and v. ``spam_opt.kernels.cpp_build`` builds and
loads it; ``spam_opt.kernels.dispatch`` calls this only once it has loaded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spam_opt.kernels.cpp_build import optimizer_ops_take
from spam_opt.kernels.result import KernelResult, partition
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.inputs import StepScalars, TensorState


def spam_cpp(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
             h: StepScalars) -> KernelResult:
    """The group's float32 contiguous tensors in one op call; any others (bf16, strided) through foreach."""
    fast, slow = partition(optimizer_ops_take(p, g, st.exp_avg) for p, g, st in zip(params, grads, states))
    parts: list[tuple[list[int], KernelResult]] = []
    if fast:
        clip = float("inf") if h.clip_threshold is None else h.clip_threshold
        sts = [states[i] for i in fast]
        low = [None if st.kept is None else st.kept.low for st in sts]
        starts = [None if st.kept is None else st.kept.starts for st in sts]
        c, f = torch.ops.spam_opt.spam_step_(
            [params[i] for i in fast], [grads[i] for i in fast], [st.exp_avg for st in sts],
            [st.exp_avg_sq for st in sts], [st.step for st in sts], low, starts, gate,
            h.lr * h.warmup_scale, h.beta1, h.beta2, h.eps, 1 - h.lr * h.weight_decay, clip,
            -1.0 if h.maximize else 1.0)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if slow:
        parts.append((slow, spam_foreach([params[i] for i in slow], [grads[i] for i in slow],
                                         [states[i] for i in slow], gate, h)))
    return KernelResult.merge(len(params), parts)
