"""8-bit moments through a float32 kernel: per parameter, dequantize, step, requantize.

The reference, foreach and compiled paths step 8-bit moments this way (the C++ kernel does the three in one
pass). One parameter at a time, so the float32 copies never hold more than one parameter's moments.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.quantized_state import block_ids
from spam_opt.sparse import KeptEntries


def on_float32_moments(kernel: Kernel, params: list[Tensor], grads: list[Tensor], states: list[Any],
                       gate: Tensor | None, h: StepScalars) -> KernelResult:
    """Run ``kernel`` (which takes ``TensorState``) on a group whose states may hold 8-bit moments."""
    plain = [i for i, st in enumerate(states) if isinstance(st, TensorState)]
    if len(plain) == len(states):
        return kernel(params, grads, states, gate, h)
    parts = []
    if plain:
        parts.append((plain, kernel([params[i] for i in plain], [grads[i] for i in plain],
                                    [states[i] for i in plain], gate, h)))
    for i, st in enumerate(states):
        if isinstance(st, QuantizedTensorState):
            parts.append(([i], _step_quantized(kernel, params[i], grads[i], st, gate, h)))
    return KernelResult.merge(len(params), parts)


def _step_quantized(kernel: Kernel, p: Tensor, g: Tensor, st: QuantizedTensorState, gate: Tensor | None,
                    h: StepScalars) -> KernelResult:
    q = st.moments
    numel = p.numel()
    idx = q.stored_indices(numel)
    blocks = None if idx is None else block_ids(idx, q.row_length)
    m, v = q.dequantize(blocks, h.eps)
    kept = None if idx is None else KeptEntries.from_indices(idx, numel)
    if kept is None:
        m, v = m.view(p.shape), v.view(p.shape)
    result = kernel([p], [g], [TensorState(m, v, st.step, kept)], gate, h)
    q.quantize_(m.reshape(-1), v.reshape(-1), blocks, h.eps, gate)
    return result
