"""The C++ Stable-SPAM kernels for CPU tensors (``torch.ops.spam_opt.stable_spam_step_`` and ``..._step8_``).

Per tensor, one read of g for the per-tensor statistics (max|g| with the NaN check, the sum of squares, and
AdaClip's count and the clipped norm from the entries above the least bound AdaClip can have, kept aside;
a second read only on a clipping step with too many of those), then one update pass.
``stable_spam_step8_`` takes 8-bit moments (SPAM's layout and maps) and dequantizes, updates and
requantizes each block in that pass. ``spam_opt.kernels.cpp_ops`` builds and loads them;
``spam_opt.kernels.dispatch`` calls this only once they have loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.cpp_ops import optimizer_ops_take
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.stable_spam.inputs import QuantizedTensorState, StepScalars, TensorState

_SCALARS = ("step", "max_ema", "norm_ema", "norm_sq_ema")


def _path(p: Tensor, g: Tensor, st: Any) -> str:
    if st.shard_groups:  # FSDP2 shards: their per-tensor statistics need collectives
        return "other"
    if isinstance(st, QuantizedTensorState):
        return "8bit" if st.moments.kept_bits is None and optimizer_ops_take(p, g, p) else "other"
    return "32bit" if optimizer_ops_take(p, g, st.exp_avg) else "other"


def stable_spam_cpp(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                    h: StepScalars) -> KernelResult:
    """Unsharded float32 contiguous tensors in one op call per state layout (float32 or 8-bit moments);
    sharded (FSDP2), low-precision or strided ones through foreach (their per-tensor statistics need
    collectives), their 8-bit moments dequantized one parameter at a time and quantized after it."""
    positions: dict[str, list[int]] = {"32bit": [], "8bit": [], "other": []}
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        positions[_path(p, g, st)].append(i)
    scalars = (h.lr, h.beta1, h.beta2, h.gamma1, h.gamma2, h.theta, h.eps, h.weight_decay)
    parts: list[tuple[list[int], KernelResult]] = []
    if positions["32bit"]:
        fast = positions["32bit"]
        sts: list[TensorState] = [states[i] for i in fast]
        c, f = torch.ops.spam_opt.stable_spam_step_(
            [params[i] for i in fast], [grads[i] for i in fast], [st.exp_avg for st in sts],
            [st.exp_avg_sq for st in sts], *([getattr(st, k) for st in sts] for k in _SCALARS),
            [st.reset for st in sts], gate, *scalars)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if positions["8bit"]:
        fast = positions["8bit"]
        qsts: list[QuantizedTensorState] = [states[i] for i in fast]
        qs = [st.moments for st in qsts]
        c, f = torch.ops.spam_opt.stable_spam_step8_(
            [params[i] for i in fast], [grads[i] for i in fast], [q.exp_avg for q in qs],
            [q.exp_avg_sq for q in qs], [q.exp_avg_scale for q in qs], [q.exp_avg_sq_scale for q in qs],
            *([getattr(st, k) for st in qsts] for k in _SCALARS), [st.reset for st in qsts],
            [q.row_length for q in qs], gate, *scalars)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if positions["other"]:
        slow = positions["other"]
        parts.append((slow, stable_spam_foreach([params[i] for i in slow], [grads[i] for i in slow],
                                                [states[i] for i in slow], gate, h)))
    return KernelResult.merge(len(params), parts)
