"""What a Stable-SPAM kernel is given: one param group's scalars for this step, and each parameter's state."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from spam_opt._distributed import ShardGroups
from spam_opt.kernels.quantized import QuantizedTensorState as QuantizedState
from spam_opt.state.kept import KeptEntries
from spam_opt.state.quantized import QuantizedMoments


@dataclass(frozen=True)
class StepScalars:
    """The host scalars of one step for one param group; ``beta1``/``gamma1`` already carry the decay."""

    lr: float
    beta1: float
    beta2: float
    gamma1: float
    gamma2: float
    theta: float
    eps: float
    weight_decay: float


@dataclass
class TensorState:
    """One parameter's Stable-SPAM state as the kernels read and write it, and what this step does to it.

    Tensors are float32 whatever the parameter dtype; the per-tensor scalars are 0-dim tensors on the
    parameter's device.
    """

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor  # n: the per-tensor count, restarted at each reset
    max_ema: Tensor  # A: EMA of max|g| (AdaClip)
    norm_ema: Tensor  # M: EMA of the gradient norm (AdaGN)
    norm_sq_ema: Tensor  # V: EMA of the squared gradient norm (AdaGN)
    reset: bool  # a momentum reset is due at this step
    shard_groups: ShardGroups  # the process groups its shards are spread over (FSDP2); () when unsharded


@dataclass
class QuantizedTensorState(QuantizedState):
    """One parameter's Stable-SPAM state with 8-bit moments (``state_bits=8``); the rest as in TensorState."""

    moments: QuantizedMoments
    step: Tensor
    max_ema: Tensor
    norm_ema: Tensor
    norm_sq_ema: Tensor
    reset: bool
    shard_groups: ShardGroups

    def with_float32_moments(self, exp_avg: Tensor, exp_avg_sq: Tensor,
                             kept: KeptEntries | None) -> TensorState:
        return TensorState(exp_avg, exp_avg_sq, self.step, self.max_ema, self.norm_ema, self.norm_sq_ema,
                           self.reset, self.shard_groups)
