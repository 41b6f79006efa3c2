"""8-bit moments through a float32 kernel: per parameter, dequantize, step, requantize.

SPAM's reference, foreach and compiled paths and every Stable-SPAM path step 8-bit moments this way (SPAM's
C++ kernel does the three in one pass). One parameter at a time, so the float32 copies never hold more than
one parameter's moments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor

from spam_opt.kernels.result import Kernel, KernelResult
from spam_opt.state.kept import KeptEntries
from spam_opt.state.quantized import QuantizedMoments, block_ids


class QuantizedTensorState(ABC):
    """A parameter's state with 8-bit moments (``state_bits=8``, ``spam_opt.state.quantized``), as a kernel
    is given it: an optimizer's own subclass knows what else its float32 kernels need."""

    moments: QuantizedMoments

    @abstractmethod
    def with_float32_moments(self, exp_avg: Tensor, exp_avg_sq: Tensor, kept: KeptEntries | None) -> Any:
        """The optimizer's float32 ``TensorState`` around these moments, sharing everything else."""


def on_float32_moments(kernel: Kernel, params: list[Tensor], grads: list[Tensor], states: list[Any],
                       gate: Tensor | None, h: Any) -> KernelResult:
    """Run ``kernel`` (which takes float32 states) on a group whose states may hold 8-bit moments."""
    plain = [i for i, st in enumerate(states) if not isinstance(st, QuantizedTensorState)]
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
                    h: Any) -> KernelResult:
    q = st.moments
    numel = p.numel()
    idx = q.stored_indices(numel)
    blocks = None if idx is None else block_ids(idx, q.row_length)
    m, v = q.dequantize(blocks, h.eps)
    kept = None if idx is None else KeptEntries.from_indices(idx, numel)
    if kept is None:
        m, v = m.view(p.shape), v.view(p.shape)
    result = kernel([p], [g], [st.with_float32_moments(m, v, kept)], gate, h)
    # Stable-SPAM's reset zeroes the moments even under a closed gate: its codes must follow.
    q.quantize_(m.reshape(-1), v.reshape(-1), blocks, h.eps, None if getattr(st, "reset", False) else gate)
    return result
