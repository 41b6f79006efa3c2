"""The C++ Stable-SPAM kernel for CPU tensors (``torch.ops.spam_opt.stable_spam_step_``).

Per tensor, one or two reads of g for the per-tensor statistics (max|g| with the NaN check and the sum of
squares; AdaClip's count and the clipped norm only on steps where AdaClip scales something), then one update
pass. ``spam_opt.kernels.cpp_ops`` builds and loads it; ``spam_opt.kernels.dispatch`` calls this only once
it has loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.cpp_ops import optimizer_ops_take
from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult, partition
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.stable_spam.inputs import StepScalars, TensorState

_FIELDS = ("exp_avg", "exp_avg_sq", "step", "max_ema", "norm_ema", "norm_sq_ema")


def stable_spam_cpp(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                    h: StepScalars) -> KernelResult:
    """Unsharded float32 contiguous tensors in one op call; sharded (FSDP2), low-precision or strided ones
    through foreach (their per-tensor statistics need collectives); 8-bit moments one parameter at a time,
    dequantized for the op and quantized after it."""
    return on_float32_moments(_cpp, params, grads, states, gate, h)


def _cpp(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
         h: StepScalars) -> KernelResult:
    fast, slow = partition(not st.shard_groups and optimizer_ops_take(p, g, st.exp_avg)
                           for p, g, st in zip(params, grads, states))
    parts: list[tuple[list[int], KernelResult]] = []
    if fast:
        sts = [states[i] for i in fast]
        fields = [[getattr(st, f) for st in sts] for f in _FIELDS]
        c, f = torch.ops.spam_opt.stable_spam_step_(
            [params[i] for i in fast], [grads[i] for i in fast], *fields, [st.reset for st in sts], gate,
            h.lr, h.beta1, h.beta2, h.gamma1, h.gamma2, h.theta, h.eps, h.weight_decay)
        parts.append((fast, KernelResult(list(c.unbind()), list(f.unbind()))))
    if slow:
        parts.append((slow, stable_spam_foreach([params[i] for i in slow], [grads[i] for i in slow],
                                                [states[i] for i in slow], gate, h)))
    return KernelResult.merge(len(params), parts)
