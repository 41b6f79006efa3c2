"""Stable-SPAM ("How to Train in 4-Bit More Stably than 16-Bit Adam"): AdaClip, AdaGN and MoRet around Adam.

The class owns validation, state and the schedule (global step, momentum resets, the cosine decay of beta1
and gamma1); the arithmetic lives in ``_stable_spam_functional``. DESIGN.md ("Stable-SPAM") gives the rule.
The order of operations and the step counts follow the authors' published code; deliberate differences:

- at a reset step the moments are zeroed before the update uses them (theirs applies the old moments, with
  the restarted bias correction, and discards them afterwards);
- ``p.grad`` is never written (their AdaClip rescales it in place);
- state is float32 whatever the parameter dtype, and the global step is saved in ``state_dict()``;
- a NaN/Inf gradient leaves its tensor and state untouched (theirs poisons the EMAs for good); a reset due
  on that step (or on a ``gate=False`` step, or while the tensor has no gradient) still zeroes the moments;
- the cosine decay of beta1/gamma1 holds ``eta_min`` after ``total_steps`` (theirs climbs back up);
- under FSDP2 the per-tensor max|g| and norm are all-reduced over the shards, as for the full tensor;
- ``eps`` must be > 0, and their ``amsgrad`` and ``gamma1=-1`` options are not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from spam_opt import _spam_cpu
from spam_opt import _stable_spam_functional as F
from spam_opt._global_step import GlobalStepOptimizer, local_tensor
from spam_opt._validation import check_betas, check_int, check_kernel_flags, check_number
from spam_opt.stats import SpikeStats, stack_counts

_SCALAR_KEYS = ("step", "max_ema", "norm_ema", "norm_sq_ema")
_STATE_KEYS = ("exp_avg", "exp_avg_sq", *_SCALAR_KEYS, "reset_number")
_ALLOWED_GROUP_KEYS = frozenset(
    ["params", "name", "initial_lr", "lr", "betas", "eps", "weight_decay", "gamma1", "gamma2", "theta",
     "total_steps", "eta_min", "reset_interval", "foreach", "fused"]
)


def _shard_groups(p: Tensor) -> F.ShardGroups:
    """The process groups over which a DTensor's entries are split: per-tensor statistics reduce over them."""
    if not hasattr(p, "device_mesh"):
        return ()
    return tuple(p.device_mesh.get_group(dim) for dim, placement in enumerate(p.placements)
                 if placement.is_shard())


def decay_factor(s: int, total_steps: int | None, eta_min: float) -> float:
    """The factor on beta1 and gamma1 at global step ``s``: cosine from 1 to ``eta_min``.

    As in the authors' code the cosine has period ``total_steps + 1``; past its end the factor stays at
    ``eta_min`` (theirs would climb back up).
    """
    if total_steps is None:
        return 1.0
    t = min(s, total_steps + 1)
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * t / (total_steps + 1))) / 2.0


class StableSPAM(GlobalStepOptimizer):
    """Stable-SPAM: Adam with AdaClip, AdaGN and momentum reset (MoRet).

    Per tensor, before the Adam moments: AdaClip scales the entries above a bias-corrected EMA of max|g|
    (factor ``theta``) down by (that EMA / max|g|); AdaGN rescales the gradient to the norm given by EMAs of
    its norm (``gamma1``) and squared norm (``gamma2``). Every ``reset_interval`` steps the moments are zeroed
    and the per-tensor count restarts (0 disables resets). With ``total_steps`` set, beta1 and gamma1 are
    multiplied by a cosine decay from 1 to ``eta_min``. Then Adam with decoupled weight decay.
    ``step(gate=...)`` takes an optional 0-dim bool device tensor: False skips the update on device.

    Example::

        from spam_opt.stable_spam import StableSPAM
        opt = StableSPAM(model.parameters(), lr=1e-3, total_steps=10_000)
        model(x).loss.backward()
        opt.step()
        opt.zero_grad()
        scaled = opt.spike_stats().clipped  # entries AdaClip scaled down, per parameter, on device
    """

    step_key = "stable_spam_step"
    state_keys = _STATE_KEYS
    allowed_group_keys = _ALLOWED_GROUP_KEYS

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
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
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma1=gamma1, gamma2=gamma2,
                        theta=theta, total_steps=total_steps, eta_min=eta_min, reset_interval=reset_interval,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        _validate_group(group, where)


    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any]) -> None:
        local = local_tensor(p)
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = torch.zeros_like(local, dtype=torch.float32, memory_format=torch.preserve_format)
        for key in _SCALAR_KEYS:
            state[key] = torch.zeros((), dtype=torch.float32, device=local.device)
        state["reset_number"] = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, gate: Tensor | None = None) -> Any:
        """Perform one optimization step; ``gate`` (0-dim bool tensor) False skips it on device."""
        loss, s = self._advance(closure)
        stepped, clipped, nonfinite = [], [], []
        for group in self.param_groups:
            interval = group["reset_interval"]
            reset_number = s // interval if interval > 0 else 0
            params, grads, states, resets, shard_groups = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StableSPAM does not support sparse gradients; use dense gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, state)
                # A parameter without a gradient on a reset step is reset at its next step with one.
                resets.append(state["reset_number"] != reset_number)
                state["reset_number"] = reset_number
                stepped.append(p)
                params.append(local_tensor(p))
                grads.append(local_tensor(p.grad))
                states.append(F.TensorState(*(state[k] for k in ("exp_avg", "exp_avg_sq", *_SCALAR_KEYS))))
                shard_groups.append(_shard_groups(p))
            if not params:
                continue
            factor = decay_factor(s, group["total_steps"], group["eta_min"])
            beta1, beta2 = group["betas"]
            scalars = F.StepScalars(
                lr=float(group["lr"]), beta1=beta1 * factor, beta2=beta2, gamma1=group["gamma1"] * factor,
                gamma2=group["gamma2"], theta=group["theta"], eps=group["eps"],
                weight_decay=group["weight_decay"],
            )
            kernel = _select_kernel(group["foreach"], group["fused"], params[0].device)
            result = kernel(params, grads, states, resets, shard_groups, gate, scalars)
            clipped.extend(result.clipped)
            nonfinite.extend(result.nonfinite)
        device = local_tensor(stepped[0]).device if stepped else torch.device("cpu")
        self._last_stats = SpikeStats(step=s, params=stepped, clipped=stack_counts(clipped, device),
                                      nonfinite=stack_counts(nonfinite, device))
        return loss


def _select_kernel(foreach: bool | None, fused: bool | None,
                   device: torch.device) -> Callable[..., F.KernelResult]:
    """Honour explicit flags; with neither set, the C++ step on CPU (when it builds), else foreach."""
    if foreach is False and not fused:
        return F.stable_spam_reference
    if fused or (foreach is None and fused is None and device.type == "cpu"):
        reason = (_spam_cpu.load() if device.type == "cpu"
                  else f"StableSPAM's fused step runs on CPU tensors only, got {device.type}")
        if _spam_cpu.fused_or_fallback(reason, explicit=bool(fused), optimizer="StableSPAM"):
            return _spam_cpu.stable_spam_cpu
    return F.stable_spam_foreach


def _validate_group(group: dict[str, Any], where: str) -> None:
    """Check every hyperparameter of a group; errors name the option and its accepted range."""
    lr = group["lr"]
    check_number(f"lr ({where})", float(lr) if isinstance(lr, Tensor) else lr, low=0.0)
    check_betas(f"betas ({where})", group["betas"])
    # eps > 0: an entry whose gradient is 0 since a reset would otherwise get 0/0.
    check_number(f"eps ({where})", group["eps"], low=0.0, low_open=True)
    check_number(f"weight_decay ({where})", group["weight_decay"], low=0.0)
    for name in ("gamma1", "gamma2", "theta"):
        check_number(f"{name} ({where})", group[name], low=0.0, high=1.0, high_open=True)
    if group["total_steps"] is not None:
        check_int(f"total_steps ({where})", group["total_steps"], low=1)
    check_number(f"eta_min ({where})", group["eta_min"], low=0.0, high=1.0)
    check_int(f"reset_interval ({where})", group["reset_interval"])
    check_kernel_flags(group, where)
