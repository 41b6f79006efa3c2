"""What a SPAM kernel is given: one param group's scalars for this step, and each parameter's state."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from spam_opt.kernels.quantized import QuantizedTensorState as QuantizedState
from spam_opt.state.kept import KeptEntries
from spam_opt.state.quantized import QuantizedMoments


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one step for one param group (host values: no device sync to build them)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    warmup_scale: float
    clip_threshold: float | None  # None: clipping is off at this step
    maximize: bool


@dataclass
class TensorState:
    """One parameter's SPAM state as the kernels read and write it (float32 whatever the parameter dtype).

    Under sparse momentum (``kept`` set) the moments hold only the kept entries, in ascending order of their
    flat index; otherwise they have the parameter's shape.
    """

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor  # n: the per-parameter count of the bias corrections, never reset (0-dim float32)
    kept: KeptEntries | None


@dataclass
class QuantizedTensorState(QuantizedState):
    """One parameter's SPAM state with 8-bit moments (``state_bits=8``, ``spam_opt.state.quantized``)."""

    moments: QuantizedMoments
    step: Tensor  # n, as in TensorState

    def with_float32_moments(self, exp_avg: Tensor, exp_avg_sq: Tensor,
                             kept: KeptEntries | None) -> TensorState:
        return TensorState(exp_avg, exp_avg_sq, self.step, kept)
