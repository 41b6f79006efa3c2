"""What SPAM and StableSPAM share: one global step, one step loop, state that reloads as saved."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from spam_opt._distributed import local_tensor
from spam_opt._validation import check_known_keys
from spam_opt.kernels.dispatch import KernelTable, select_kernel
from spam_opt.state.checks import loadable_groups
from spam_opt.stats import SpikeStats, stack_counts


class SpikeAwareOptimizer(Optimizer):
    """Base of the spam-opt optimizers: the step loop, the global step and checkpointing.

    ``step()`` is one loop for every optimizer: per param group it lets the subclass say what the global
    step means for the group (``_plan``), gathers the parameters that have a gradient with their state
    (``_tensor_state`` creates or resets it and returns the kernel's view of it), builds the group's
    scalars (``_scalars``), runs the kernel that ``spam_opt.kernels.dispatch`` picks from the group's
    ``foreach``/``fused`` flags, and collects the spike counts that ``spike_stats()`` returns.

    The global step (number of ``step()`` calls) is the clock of resets and schedules, one per optimizer,
    so a group added later joins the same schedule. ``state_dict()`` writes it into every param group
    (distributed checkpointing keeps groups but drops unknown top-level keys) under ``step_key``, which
    differs per optimizer so that one cannot load another's state. ``load_state_dict()`` checks the state
    and keeps it in its saved dtypes: torch would cast float32 moments to a bf16 parameter's dtype.
    Subclasses set ``kernels``, ``step_key``, ``state_keys``, ``allowed_group_keys`` and implement
    ``_check_group``, ``_plan``, ``_tensor_state`` and ``_scalars``.
    """

    kernels: KernelTable
    step_key: str
    state_keys: tuple[str, ...]
    allowed_group_keys: frozenset[str]

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self._check_group(defaults, f"{type(self).__name__}()")
        self._global_step = 0
        self._last_stats: SpikeStats | None = None
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Raise ValueError naming the option when a group's hyperparameter is out of range."""
        raise NotImplementedError

    def _plan(self, group: dict[str, Any], s: int) -> Any:
        """What global step ``s`` means for ``group`` (resets, warmup, decays): passed to the two below."""
        raise NotImplementedError

    def _tensor_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], index: int,
                      plan: Any) -> Any:
        """Create or reset ``p``'s state as the plan says; return the kernels' view of it.

        ``index`` counts the optimizer's parameters across groups (a stable identity of ``p``).
        """
        raise NotImplementedError

    def _scalars(self, group: dict[str, Any], plan: Any) -> Any:
        """The group's scalars of this step, as the kernels take them."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, gate: Tensor | None = None) -> Any:
        """Perform one optimization step; ``gate`` (0-dim bool tensor) False skips it on device."""
        loss, s = self._advance(closure)
        stepped, clipped, nonfinite = [], [], []
        index = -1
        for group in self.param_groups:
            plan = self._plan(group, s)
            params, grads, states = [], [], []
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use dense gradients")
                states.append(self._tensor_state(p, self.state[p], group, index, plan))
                stepped.append(p)
                params.append(local_tensor(p))
                grads.append(local_tensor(p.grad))
            if not params:
                continue
            kernel = select_kernel(self.kernels, group["foreach"], group["fused"], params[0].device)
            result = kernel(params, grads, states, gate, self._scalars(group, plan))
            clipped.extend(result.clipped)
            nonfinite.extend(result.nonfinite)
        device = local_tensor(stepped[0]).device if stepped else torch.device("cpu")
        self._last_stats = SpikeStats(step=s, params=stepped, clipped=stack_counts(clipped, device),
                                      nonfinite=stack_counts(nonfinite, device))
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        name = type(self).__name__
        check_known_keys(param_group, self.allowed_group_keys, f"a {name} param group")
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1], f"{name} param group {len(self.param_groups) - 1}")

    def _advance(self, closure: Callable[[], Any] | None) -> tuple[Any, int]:
        """Run the closure (with gradients enabled), then count this step; returns (loss, global step)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._global_step += 1
        return loss, self._global_step

    @property
    def global_step(self) -> int:
        """Number of ``step()`` calls so far: the clock of resets and schedules."""
        return self._global_step

    def spike_stats(self) -> SpikeStats | None:
        """Per-parameter clip and non-finite counts of the last step, on device; None before any step."""
        return self._last_stats

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for group in sd["param_groups"]:
            group[self.step_key] = self._global_step
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("not an optimizer state dict: expected the keys 'state' and 'param_groups'")
        steps = {g.get(self.step_key) for g in groups}
        if len(steps) != 1 or not isinstance(next(iter(steps)), int):
            raise ValueError(
                f"this state dict was not written by {name} (param groups lack a consistent "
                f"{self.step_key!r}); load a checkpoint saved from a {name} optimizer"
            )
        if "state_bits" in self.defaults:
            groups = loadable_groups(state_dict, self.param_groups, name)
        saved_state = state_dict["state"]
        for key, entry in saved_state.items():
            missing = [k for k in self.state_keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ValueError(f"corrupt {name} state for parameter {key}: missing {missing}")
        stripped = dict(state_dict)
        stripped["param_groups"] = [{k: v for k, v in g.items() if k != self.step_key} for g in groups]
        super().load_state_dict(stripped)
        saved_ids = chain.from_iterable(g["params"] for g in groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            if saved_id in saved_state:
                self.state[p] = {k: v.to(device=local_tensor(p).device, copy=True) if isinstance(v, Tensor)
                                 else v for k, v in saved_state[saved_id].items()}
        for i, group in enumerate(self.param_groups):
            self._check_group(group, f"loaded {name} param group {i}")
        self._global_step = next(iter(steps))
