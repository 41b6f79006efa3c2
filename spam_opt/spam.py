"""SPAM: Spike-Aware Adam with Momentum Reset (ICLR 2025), a drop-in replacement for torch.optim.AdamW.

The class owns its options and its schedule (warmup after a momentum reset, clip delay, which entries
sparse momentum keeps); ``SpikeAwareOptimizer`` owns the shared options, the state, the resets and the step
loop; the arithmetic lives in ``spam_opt.kernels.spam``. docs/algorithm.md gives the update rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from spam_opt._optimizer import SpikeAwareOptimizer, StepPlan, reset_number
from spam_opt._validation import check_int, check_number
from spam_opt.kernels.dispatch import SPAM_KERNELS
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.sparse import mask_key
from spam_opt.state.layout import Float32Moments, KeptDraw
from spam_opt.state.quantized import QuantizedMoments


@dataclass(frozen=True)
class _Schedule(StepPlan):
    """What the global step means for one param group: resets, the warmup after each, the clip delay."""

    warmup_scale: float
    clip_on: bool


def _schedule(s: int, group: dict[str, Any]) -> _Schedule:
    interval, warmup, delay = group["reset_interval"], group["warmup_steps"], group["clip_delay"]
    k = s % interval if interval > 0 else s
    clip_on = group["threshold"] > 0 and s >= delay and (interval == 0 or k >= delay)
    if interval == 0 or s < interval or k >= warmup:
        scale = 1.0
    else:
        scale = 1.0 - 0.99 * (1.0 + math.cos(math.pi * k / (warmup + 1))) / 2.0
    return _Schedule(reset_number(group, s), scale, clip_on)


class SPAM(SpikeAwareOptimizer):
    """Spike-Aware Adam with Momentum Reset.

    Adam with decoupled weight decay, plus: momentum reset every ``reset_interval`` steps followed by a
    cosine learning-rate warmup of ``warmup_steps``; spike-aware clipping of entries whose squared gradient
    exceeds ``threshold`` times their second moment (after ``clip_delay`` steps, and ``clip_delay`` steps
    after each reset); optional sparse momentum (``density`` < 1) for parameters of 2 or more dimensions;
    optional 8-bit moments (``state_bits=8``) for parameters of 2 or more dimensions, blockwise quantized
    (``spam_opt.state.quantized``; 0.25x AdamW's state dense, 0.08x at density 0.25).
    Every option can be set per param group. ``step(gate=...)`` takes an optional 0-dim bool device tensor:
    when it is False the step leaves every parameter and moment untouched (used by ``SpikeGuard``). An entry
    whose gradient is NaN/Inf keeps its value and moments while the rest of its tensor updates;
    ``spike_stats().nonfinite`` flags the parameter.

    Example::

        import spam_opt
        opt = spam_opt.SPAM(model.parameters(), lr=1e-3)
        loss = model(x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        clipped = opt.spike_stats().clipped  # entries clipped per parameter, on device

        small = spam_opt.SPAM(spam_opt.param_groups(model, density=0.25), state_bits=8)  # ~0.1x AdamW's state
    """

    kernels = SPAM_KERNELS
    step_key = "spam_step"
    options = ("threshold", "warmup_steps", "clip_delay", "density", "seed")
    tensor_scalars = ("step",)  # n: the count of the bias corrections, never reset
    kernels_negate = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        threshold: float = 5000.0,
        reset_interval: int = 500,
        warmup_steps: int = 150,
        clip_delay: int = 20,
        density: float = 1.0,
        seed: int = 0,
        state_bits: int = 32,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, threshold=threshold,
                        reset_interval=reset_interval, warmup_steps=warmup_steps, clip_delay=clip_delay,
                        density=density, seed=seed, state_bits=state_bits, foreach=foreach, fused=fused,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_options(self, group: dict[str, Any], where: str) -> None:
        check_number(f"threshold ({where})", group["threshold"], low=0.0)
        check_int(f"warmup_steps ({where})", group["warmup_steps"])
        check_int(f"clip_delay ({where})", group["clip_delay"])
        check_number(f"density ({where})", group["density"], low=0.0, high=1.0, low_open=True)
        check_int(f"seed ({where})", group["seed"])
        interval, warmup = group["reset_interval"], group["warmup_steps"]
        if interval > 0 and warmup > interval:
            raise ValueError(
                f"invalid warmup_steps={warmup} ({where}): the warmup after a momentum reset must fit in the "
                f"reset interval, accepted range is [0, reset_interval={interval}]"
            )

    def _plan(self, group: dict[str, Any], s: int) -> _Schedule:
        return _schedule(s, group)

    def _kept_draw(self, p: Tensor, group: dict[str, Any], index: int, reset: int) -> KeptDraw | None:
        """Sparse momentum: parameters of 2 or more dimensions keep a fraction ``density`` of their entries,
        drawn again at every reset (``spam_opt.sparse``)."""
        if group["density"] >= 1.0 or p.dim() < 2:
            return None
        return KeptDraw(mask_key(group["seed"], index, reset), group["density"])

    def _kernel_state(self, p: Tensor, state: dict[str, Any], moments: Float32Moments | QuantizedMoments,
                      reset: bool) -> TensorState | QuantizedTensorState:
        if isinstance(moments, QuantizedMoments):
            return QuantizedTensorState(moments, state["step"])
        return TensorState(moments.exp_avg, moments.exp_avg_sq, state["step"], moments.kept)

    def _scalars(self, group: dict[str, Any], plan: _Schedule) -> StepScalars:
        beta1, beta2 = group["betas"]
        return StepScalars(lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                           weight_decay=group["weight_decay"], warmup_scale=plan.warmup_scale,
                           clip_threshold=float(group["threshold"]) if plan.clip_on else None,
                           maximize=group["maximize"])
