"""Stable-SPAM ("How to Train in 4-Bit More Stably than 16-Bit Adam"): AdaClip, AdaGN and MoRet around Adam.

The class owns its options and its schedule (the cosine decay of beta1 and gamma1); ``SpikeAwareOptimizer``
owns the shared options, the state, the momentum resets and the step loop; the arithmetic lives in
``spam_opt.kernels.stable_spam``. docs/algorithm.md gives the rule: the order of operations and the step
counts of the authors' published code, and the deliberate differences from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from spam_opt._distributed import shard_groups
from spam_opt._optimizer import SpikeAwareOptimizer, StepPlan, reset_number
from spam_opt._validation import check_int, check_number
from spam_opt.kernels.dispatch import STABLE_SPAM_KERNELS
from spam_opt.kernels.stable_spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.state.layout import Float32Moments
from spam_opt.state.quantized import QuantizedMoments

# The per-tensor statistics, beside the moments: the count n (restarted at each reset), AdaClip's A, AdaGN's
# M and V; 0-dim float32 tensors.
_SCALAR_KEYS = ("step", "max_ema", "norm_ema", "norm_sq_ema")


def decay_factor(s: int, total_steps: int | None, eta_min: float) -> float:
    """The factor on beta1 and gamma1 at global step ``s``: cosine from 1 to ``eta_min``.

    As in the authors' code the cosine has period ``total_steps + 1``; past its end the factor stays at
    ``eta_min`` (theirs would climb back up).
    """
    if total_steps is None:
        return 1.0
    t = min(s, total_steps + 1)
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * t / (total_steps + 1))) / 2.0


@dataclass(frozen=True)
class _Schedule(StepPlan):
    """What the global step means for one param group: resets, and the factor on beta1 and gamma1."""

    decay: float


class StableSPAM(SpikeAwareOptimizer):
    """Stable-SPAM: Adam with AdaClip, AdaGN and momentum reset (MoRet).

    Per tensor, before the Adam moments: AdaClip scales the entries above a bias-corrected EMA of max|g|
    (factor ``theta``) down by (that EMA / max|g|); AdaGN rescales the gradient to the norm given by EMAs of
    its norm (``gamma1``) and squared norm (``gamma2``). Every ``reset_interval`` steps the moments are zeroed
    and the per-tensor count restarts (0 disables resets). With ``total_steps`` set, beta1 and gamma1 are
    multiplied by a cosine decay from 1 to ``eta_min``. Then Adam with decoupled weight decay.
    ``state_bits=8`` stores the Adam moments of parameters of 2 or more dimensions in 8 bits, in SPAM's
    blockwise layout (``spam_opt.state.quantized``; 0.25x AdamW's state); the per-tensor statistics stay
    float32 scalars. ``maximize=True`` ascends: the rule runs on the negated gradient.
    ``step(gate=...)`` takes an optional 0-dim bool device tensor: False skips the update on device.

    Example::

        from spam_opt.stable_spam import StableSPAM
        opt = StableSPAM(model.parameters(), lr=1e-3, total_steps=10_000)  # state_bits=8: a quarter of it
        model(x).loss.backward()
        opt.step()
        opt.zero_grad()
        scaled = opt.spike_stats().clipped  # entries AdaClip scaled down, per parameter, on device
    """

    kernels = STABLE_SPAM_KERNELS
    step_key = "stable_spam_step"
    options = ("gamma1", "gamma2", "theta", "total_steps", "eta_min")
    tensor_scalars = _SCALAR_KEYS

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gamma1: float = 0.7,
        gamma2: float = 0.9,
        theta: float = 0.999,
        total_steps: int | None = None,
        eta_min: float = 0.5,
        reset_interval: int = 1000,
        state_bits: int = 32,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma1=gamma1, gamma2=gamma2,
                        theta=theta, total_steps=total_steps, eta_min=eta_min, reset_interval=reset_interval,
                        state_bits=state_bits, foreach=foreach, fused=fused, maximize=maximize)
        super().__init__(params, defaults)

    def _check_options(self, group: dict[str, Any], where: str) -> None:
        # eps > 0: an entry whose gradient is 0 since a reset would otherwise get 0/0.
        check_number(f"eps ({where})", group["eps"], low=0.0, low_open=True)
        for name in ("gamma1", "gamma2", "theta"):
            check_number(f"{name} ({where})", group[name], low=0.0, high=1.0, high_open=True)
        if group["total_steps"] is not None:
            check_int(f"total_steps ({where})", group["total_steps"], low=1)
        check_number(f"eta_min ({where})", group["eta_min"], low=0.0, high=1.0)

    def _plan(self, group: dict[str, Any], s: int) -> _Schedule:
        return _Schedule(reset_number(group, s), decay_factor(s, group["total_steps"], group["eta_min"]))

    def _kernel_state(self, p: Tensor, state: dict[str, Any], moments: Float32Moments | QuantizedMoments,
                      reset: bool) -> TensorState | QuantizedTensorState:
        # The kernels restart the count at a reset, after AdaClip and AdaGN have used it (docs/algorithm.md).
        scalars = [state[k] for k in _SCALAR_KEYS]
        if isinstance(moments, QuantizedMoments):
            return QuantizedTensorState(moments, *scalars, reset=reset, shard_groups=shard_groups(p))
        return TensorState(moments.exp_avg, moments.exp_avg_sq, *scalars, reset=reset,
                           shard_groups=shard_groups(p))

    def _scalars(self, group: dict[str, Any], plan: _Schedule) -> StepScalars:
        beta1, beta2 = group["betas"]
        return StepScalars(lr=float(group["lr"]), beta1=beta1 * plan.decay, beta2=beta2,
                           gamma1=group["gamma1"] * plan.decay, gamma2=group["gamma2"], theta=group["theta"],
                           eps=group["eps"], weight_decay=group["weight_decay"])
