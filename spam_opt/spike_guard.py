"""Skip (or scale down) an optimizer update when the loss or the gradient norm spikes, decided on device.

A step is a spike when the global gradient norm, or the loss when given, is an outlier of
``spam_opt.outliers.RollingOutliers`` (more than ``sigma`` standard deviations above its mean over the last
``window`` steps, after ``min_history`` steps: the rule the monitor's loss spikes use too), or is not finite.
The rolling statistics live in fixed-size ring buffers on the gradients' device, and the decision is a
device tensor that reaches the optimizer without a host synchronisation:

* an optimizer whose ``step`` takes ``gate=`` (SPAM, StableSPAM) gets ``gate = not skipped``;
* any other optimizer (torch AdamW, ...) steps normally on a snapshot of the parameters and of its tensor
  state, which ``torch.where`` restores on a skipped step. That costs one copy of the parameters and of the
  optimizer state (for AdamW: three times the parameters' memory) for the duration of the step.

Every finite value enters the history, spikes at the bound they broke: so a lasting change of level (a new LR
phase, say) is skipped for a while and then accepted, rather than freezing the run.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from spam_opt._distributed import ShardGroups, all_reduce, local_tensor, shard_groups
from spam_opt._validation import check_int, check_number
from spam_opt.outliers import MIN_HISTORY, RollingOutliers

ACTIONS = ("skip", "scale")


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together, as a float32 device tensor, without a host sync.

    Under FSDP2 each rank holds shards (DTensors): their squared norms are all-reduced, so every rank gets
    the norm of the full gradient. Under DDP the gradients are already identical on every rank.
    """
    by_groups: dict[ShardGroups, list[Tensor]] = {}
    for g in grads:
        by_groups.setdefault(shard_groups(g), []).append(local_tensor(g))
    total = None
    for groups, tensors in by_groups.items():
        squares = torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32)).square().sum()
        all_reduce(squares, groups, "sum")
        total = squares if total is None else total + squares.to(total.device)
    if total is None:
        raise ValueError("global_grad_norm needs at least one gradient")
    return total.sqrt()


def _is_accelerated(optimizer: Any) -> bool:
    """An ``accelerate`` ``AcceleratedOptimizer`` (or anything that wraps an optimizer the same way)."""
    inner = getattr(optimizer, "optimizer", None)
    return hasattr(optimizer, "gradient_state") and isinstance(inner, Optimizer)


class SpikeGuard:
    """Wraps an optimizer; ``guard.step(loss)`` skips (or scales down) updates at loss/grad-norm spikes.

    ``action="skip"`` leaves the parameters (and the optimizer's state) of a spiking step untouched;
    ``action="scale"`` multiplies the parameter change by ``sigma / z`` (< 1, z: the z-score of the worse of
    the two signals), while the optimizer's state takes the full gradient. Non-finite values are always
    skipped, from the first step. The guard accepts torch optimizers, SPAM, StableSPAM, and an ``accelerate``
    ``AcceleratedOptimizer`` around any of them (under gradient accumulation it acts on syncing steps only).
    Use it in place of the optimizer for ``step`` and ``zero_grad``; build LR schedulers on
    ``guard.optimizer``. ``guard.state_dict()`` holds the guard's own state (checkpoint it next to the
    optimizer's).

    Example::

        guard = SpikeGuard(optimizer, sigma=6.0, window=128)
        loss = model(batch).loss
        loss.backward()
        guard.step(loss=loss)  # no host sync
        guard.zero_grad()
        print(guard.num_skipped)  # reading it syncs: do it at the logging interval
    """

    def __init__(self, optimizer: Any, sigma: float = 6.0, window: int = 128, min_history: int = MIN_HISTORY,
                 action: str = "skip") -> None:
        inner = optimizer.optimizer if _is_accelerated(optimizer) else optimizer
        if not isinstance(inner, Optimizer):
            raise ValueError("SpikeGuard wraps a torch.optim.Optimizer or an accelerate "
                             f"AcceleratedOptimizer; got {type(optimizer).__name__}")
        check_number("sigma", sigma, low=0.0, low_open=True)
        check_int("window", window, low=2)
        check_int("min_history", min_history, low=2)
        if min_history > window:
            raise ValueError(f"invalid min_history={min_history}: accepted range is [2, window={window}]")
        if action not in ACTIONS:
            raise ValueError(f"invalid action={action!r}: accepted values are 'skip', 'scale'")
        self.optimizer = optimizer
        self.sigma, self.window, self.min_history, self.action = float(sigma), window, min_history, action
        self._inner = inner
        scaler = getattr(optimizer, "scaler", None)
        self._takes_gate = scaler is None and "gate" in inspect.signature(inner.step).parameters
        self._norm: RollingOutliers | None = None
        self._loss: RollingOutliers | None = None
        self._num_skipped: Tensor | None = None
        self._pending_state: dict[str, Any] | None = None
        self.last_skipped: Tensor | None = None  # 0-dim bool on device: the last step's decision

    # -- what a trainer uses in place of the optimizer ---------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def num_skipped(self) -> int:
        """Steps skipped (or scaled down) so far. Reading it synchronises with the device."""
        return 0 if self._num_skipped is None else int(self._num_skipped)

    # -- the step -----------------------------------------------------------------------------------------

    def _ensure_buffers(self, device: torch.device) -> None:
        if self._norm is not None:
            return
        self._norm, self._loss = RollingOutliers(self.window, device), RollingOutliers(self.window, device)
        self._num_skipped = torch.zeros((), dtype=torch.int64, device=device)
        if self._pending_state is not None:
            self._restore(self._pending_state, device)
            self._pending_state = None

    def _loss_tensor(self, loss: Tensor | float, device: torch.device) -> Tensor:
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError("SpikeGuard.step(loss=...) takes a scalar loss; got shape "
                                 f"{tuple(loss.shape)}; pass the mean loss")
            value = loss.detach().reshape(()).to(device=device, dtype=torch.float32)
        else:
            value = torch.tensor(float(loss), dtype=torch.float32, device=device)
        import torch.distributed as dist

        # Every rank must take the same decision, so the decision uses the mean loss over ranks.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            value = value.clone()
            dist.all_reduce(value)
            value = value / dist.get_world_size()
        return value

    @torch.no_grad()
    def step(self, loss: Tensor | float | None = None) -> None:
        """Measure, decide on device, and step the optimizer (or not). No host synchronisation."""
        if _is_accelerated(self.optimizer) and not self.optimizer.gradient_state.sync_gradients:
            return  # accumulating: the wrapped optimizer would not step either
        params = [p for group in self._inner.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            self.optimizer.step()
            return
        norm = global_grad_norm([p.grad for p in params])
        self._ensure_buffers(norm.device)
        factor = self._factor(self._norm, norm)
        if loss is not None:
            factor = torch.minimum(factor, self._factor(self._loss, self._loss_tensor(loss, norm.device)))
        if self.action == "skip":
            factor = torch.where(factor < 1, 0.0, 1.0)
        skipped = factor < 1
        self._num_skipped += skipped.to(torch.int64)
        self.last_skipped = skipped

        if self._takes_gate and self.action == "skip":
            self._inner.step(gate=~skipped)
            return
        self._step_on_snapshot(params, factor)

    def _factor(self, rule: RollingOutliers, x: Tensor) -> Tensor:
        """Record ``x``; its step's factor: 1 (normal), sigma / z in (0, 1) (an outlier), 0 (not finite)."""
        z, outlier = rule.observe(x, self.sigma, self.min_history)
        factor = torch.where(outlier, self.sigma / torch.where(outlier, z, 1.0), 1.0)
        return torch.where(torch.isfinite(x), factor, 0.0)

    def _step_on_snapshot(self, params: list[Tensor], factor: Tensor) -> None:
        """Step, then undo (factor 0) or shrink (0 < factor < 1) the parameter change with ``torch.where``."""
        old_params = [p.detach().clone() for p in params]
        if self._takes_gate:  # action "scale": factor 0 (a non-finite norm, say) closes the optimizer's gate
            self._inner.step(gate=factor > 0)
            old_state: dict[int, dict[str, Tensor]] = {}
        else:
            old_state = {id(p): {k: v.clone() for k, v in self._inner.state[p].items()
                                 if isinstance(v, Tensor) and v.device == p.device}
                         for p in params}
            self.optimizer.step()
        for p, old in zip(params, old_params):
            moved = old + factor.to(old.dtype) * (p - old)
            p.copy_(torch.where(factor >= 1, p, torch.where(factor > 0, moved, old)))
        undo = factor == 0
        for p in params:
            if id(p) not in old_state:
                continue
            saved = old_state[id(p)]
            for key, value in self._inner.state[p].items():
                if isinstance(value, Tensor) and value.device == p.device:
                    # State created by this very step goes back to zeros, as if it had never been made.
                    before = saved.get(key, torch.zeros_like(value))
                    value.copy_(torch.where(undo, before, value))

    # -- checkpointing ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The guard's own state (its settings, both histories, the skip count); not the optimizer's."""
        state: dict[str, Any] = dict(sigma=self.sigma, window=self.window, min_history=self.min_history,
                                     action=self.action)
        if self._norm is not None:
            for prefix, rule in (("norm", self._norm), ("loss", self._loss)):
                state.update({f"{prefix}_{k}": v for k, v in rule.state_dict().items()})
            state["num_skipped"] = self._num_skipped.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("window") != self.window:
            saved = state_dict.get("window") if isinstance(state_dict, dict) else None
            raise ValueError(f"this SpikeGuard state dict has window={saved!r} but the guard has "
                             f"window={self.window}; build the guard with the window it was saved with")
        self.sigma, self.min_history = float(state_dict["sigma"]), state_dict["min_history"]
        self.action = state_dict["action"]
        if "norm_values" not in state_dict:
            return
        if self._norm is None:
            self._pending_state = state_dict  # buffers are made on the gradients' device at the first step
        else:
            self._restore(state_dict, self._norm.values.device)

    def _restore(self, state_dict: dict[str, Any], device: torch.device) -> None:
        for rule, prefix in ((self._norm, "norm"), (self._loss, "loss")):
            rule.load_state_dict({k: state_dict[f"{prefix}_{k}"] for k in ("values", "count")})
        self._num_skipped.copy_(state_dict["num_skipped"].to(device))
