"""SPAM: Spike-Aware Adam with Momentum Reset (ICLR 2025), a drop-in replacement for torch.optim.AdamW.

The class owns validation, state and the schedule (global step, momentum resets, warmup after a reset,
clip delay, sparse-momentum masks); the step loop is ``SpikeAwareOptimizer``'s and the arithmetic lives in
``spam_opt.kernels.spam``. docs/algorithm.md gives the update rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spam_opt._distributed import flat_span, local_tensor
from spam_opt._optimizer import SpikeAwareOptimizer
from spam_opt._state_bits import check_state_bits, check_unchanged, store_moments, stored_moments
from spam_opt._validation import check_betas, check_int, check_kernel_flags, check_number
from spam_opt.kernels.dispatch import SPAM_KERNELS
from spam_opt.kernels.draw import draw_kept, kept_bitmap
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars, TensorState
from spam_opt.quantized_state import quantizes
from spam_opt.sparse import KeptEntries, mask_key


@dataclass(frozen=True)
class _Schedule:
    """What the global step means for one param group."""

    reset_number: int  # how many momentum resets have happened by this step
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
    return _Schedule(s // interval if interval > 0 else 0, scale, clip_on)


_ALLOWED_GROUP_KEYS = frozenset(
    ["params", "name", "initial_lr", "lr", "betas", "eps", "weight_decay", "threshold", "reset_interval",
     "warmup_steps", "clip_delay", "density", "seed", "state_bits", "foreach", "fused", "maximize"]
)


class SPAM(SpikeAwareOptimizer):
    """Spike-Aware Adam with Momentum Reset.

    Adam with decoupled weight decay, plus: momentum reset every ``reset_interval`` steps followed by a
    cosine learning-rate warmup of ``warmup_steps``; spike-aware clipping of entries whose squared gradient
    exceeds ``threshold`` times their second moment (after ``clip_delay`` steps, and ``clip_delay`` steps
    after each reset); optional sparse momentum (``density`` < 1) for parameters of 2 or more dimensions;
    optional 8-bit moments (``state_bits=8``) for parameters of 2 or more dimensions, blockwise quantized
    (``spam_opt.quantized_state``; 0.25x AdamW's state dense, 0.08x at density 0.25).
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
    state_keys = ("step", "exp_avg", "exp_avg_sq", "reset_number")
    allowed_group_keys = _ALLOWED_GROUP_KEYS

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

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        _validate_group(group, where)

    def _plan(self, group: dict[str, Any], s: int) -> _Schedule:
        return _schedule(s, group)

    def _tensor_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], index: int,
                      plan: _Schedule) -> TensorState | QuantizedTensorState:
        """Create the state of a parameter, or start a new reset interval for it (zero moments, new mask)."""
        local = local_tensor(p)
        eight = quantizes(p, group["state_bits"])
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=local.device)
        check_unchanged(state, eight, index, group)
        if state.get("reset_number") != plan.reset_number:
            state["reset_number"] = plan.reset_number
            for key in _LAYOUT_KEYS:
                state.pop(key, None)
            sparse = group["density"] < 1.0 and p.dim() >= 2
            if sparse or eight:
                numel, offset = flat_span(p)  # also refuses shards that are not whole rows
            if sparse:  # drawn on the host: its size is known without a device read (kernels/draw.py)
                kept = draw_kept(numel, mask_key(group["seed"], index, plan.reset_number), group["density"],
                                 offset=offset, device=local.device)
            if eight:
                bits = None
                if sparse:
                    bits = state["kept_bits"] = kept_bitmap(kept, numel)
                store_moments(state, local, bits, stored=kept.numel() if sparse else None)
            elif sparse:
                state["kept_low"], state["kept_starts"] = kept.low, kept.starts
                shape: tuple[int, ...] = (kept.numel(),)
                state["exp_avg"] = torch.zeros(shape, dtype=torch.float32, device=local.device)
                state["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=local.device)
            else:
                fmt = torch.preserve_format
                state["exp_avg"] = torch.zeros_like(local, dtype=torch.float32, memory_format=fmt)
                state["exp_avg_sq"] = torch.zeros_like(local, dtype=torch.float32, memory_format=fmt)
        if eight:
            return QuantizedTensorState(stored_moments(state, local), state["step"])
        kept = KeptEntries(state["kept_low"], state["kept_starts"]) if "kept_low" in state else None
        return TensorState(state["exp_avg"], state["exp_avg_sq"], state["step"], kept)

    def _scalars(self, group: dict[str, Any], plan: _Schedule) -> StepScalars:
        beta1, beta2 = group["betas"]
        return StepScalars(lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                           weight_decay=group["weight_decay"], warmup_scale=plan.warmup_scale,
                           clip_threshold=float(group["threshold"]) if plan.clip_on else None,
                           maximize=group["maximize"])


# Per-parameter state keys that depend on the layout (float32 or 8-bit moments, dense or sparse).
_LAYOUT_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale", "kept_low", "kept_starts",
                "kept_bits")


def _validate_group(group: dict[str, Any], where: str) -> None:
    """Check every hyperparameter of a group; errors name the option and its accepted range."""
    lr = group["lr"]
    check_number(f"lr ({where})", float(lr) if isinstance(lr, Tensor) else lr, low=0.0)
    check_betas(f"betas ({where})", group["betas"])
    check_number(f"eps ({where})", group["eps"], low=0.0)
    check_number(f"weight_decay ({where})", group["weight_decay"], low=0.0)
    check_number(f"threshold ({where})", group["threshold"], low=0.0)
    check_int(f"reset_interval ({where})", group["reset_interval"])
    check_int(f"warmup_steps ({where})", group["warmup_steps"])
    check_int(f"clip_delay ({where})", group["clip_delay"])
    check_number(f"density ({where})", group["density"], low=0.0, high=1.0, low_open=True)
    check_int(f"seed ({where})", group["seed"])
    check_state_bits(group["state_bits"], where)
    if group["reset_interval"] > 0 and group["warmup_steps"] > group["reset_interval"]:
        raise ValueError(
            f"invalid warmup_steps={group['warmup_steps']} ({where}): the warmup after a momentum reset must "
            f"fit in the reset interval, accepted range is [0, reset_interval={group['reset_interval']}]"
        )
    check_kernel_flags(group, where)
    if not isinstance(group["maximize"], bool):
        raise ValueError(f"invalid maximize={group['maximize']!r} ({where}): accepted values are True, False")
