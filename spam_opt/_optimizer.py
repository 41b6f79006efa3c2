"""What SPAM and StableSPAM share: the options every rule has, the state set-up, the reset schedule, one step
loop, and state that reloads as saved."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from spam_opt._distributed import local_tensor
from spam_opt._validation import check_betas, check_int, check_kernel_flags, check_known_keys, check_number
from spam_opt.kernels.dispatch import KernelTable, select_kernel
from spam_opt.state.checks import check_state_bits, check_unchanged, loadable_groups
from spam_opt.state.layout import MOMENT_KEYS, Float32Moments, KeptDraw, new_moments, stored_moments
from spam_opt.state.quantized import QuantizedMoments, quantizes
from spam_opt.stats import MomentumReset, SpikeStats, stack_counts

# Options every spam-opt optimizer takes (beside its rule's own), and the keys torch and users put in groups.
SHARED_OPTIONS = ("lr", "betas", "eps", "weight_decay", "reset_interval", "state_bits", "foreach", "fused",
                  "maximize")
_GROUP_KEYS = ("params", "name", "initial_lr")


def reset_number(group: dict[str, Any], s: int) -> int:
    """How many momentum resets ``group``'s schedule holds by global step ``s``: one every ``reset_interval``
    steps (0: never)."""
    interval = group["reset_interval"]
    return s // interval if interval > 0 else 0


@dataclass(frozen=True)
class StepPlan:
    """What global step ``s`` means for one param group; an optimizer's plan adds its rule's schedule."""

    reset_number: int  # momentum resets by this step (``reset_number``)


class SpikeAwareOptimizer(Optimizer):
    """Base of the spam-opt optimizers: shared options, state, resets, the step loop and checkpointing.

    A rule (SPAM, StableSPAM) brings its options (``options``, checked by ``_check_options``), what the
    global step means for a group (``_plan``, a ``StepPlan``), its kernels' view of a parameter's state
    (``_kernel_state``) and of a group's scalars (``_scalars``), and its kernels (``kernels``). Everything
    else is here:

    - the shared options ``SHARED_OPTIONS`` (lr, betas, eps, weight_decay, reset_interval, state_bits,
      foreach, fused, maximize) and their checks; unknown group keys are refused;
    - the state: per parameter the 0-dim float32 counters the rule names (``tensor_scalars``), the reset
      number, and moments in the group's layout (``spam_opt.state.layout``: float32 or 8-bit, dense or,
      where ``_kept_draw`` says so, sparse);
    - momentum resets: every ``reset_interval`` global steps a parameter's moments start again from zero
      (and its kept entries are drawn again); a parameter without a gradient then is reset at its next step
      with one, and its ``_kernel_state`` is told (``reset``). ``spike_stats().resets`` reports the groups
      whose schedule reset at the last step;
    - ``maximize``: the kernels get the negated gradient, unless they negate it themselves
      (``kernels_negate``);
    - ``step()``: per group the kernel that ``spam_opt.kernels.dispatch`` picks from the ``foreach``/``fused``
      flags; the spike counts that ``spike_stats()`` returns;
    - the global step (number of ``step()`` calls), the clock of resets and schedules, one per optimizer, so
      a group added later joins the same schedule. ``state_dict()`` writes it into every param group
      (distributed checkpointing keeps groups but drops unknown top-level keys) under ``step_key``, which
      differs per optimizer so that one cannot load another's state. ``load_state_dict()`` checks the state
      and keeps it in its saved dtypes: torch would cast float32 moments to a bf16 parameter's dtype.

    Example (a rule's class)::

        class MyRule(SpikeAwareOptimizer):
            kernels, step_key, options, tensor_scalars = MY_KERNELS, "my_rule_step", ("alpha",), ("step",)

            def _check_options(self, group, where): check_number(f"alpha ({where})", group["alpha"], low=0)
            def _plan(self, group, s): return StepPlan(reset_number(group, s))
            def _kernel_state(self, p, state, moments, reset): return MyState(moments, state["step"])
            def _scalars(self, group, plan): return MyScalars(lr=float(group["lr"]), alpha=group["alpha"])
    """

    kernels: KernelTable
    step_key: str
    options: tuple[str, ...]  # the rule's own hyperparameters
    tensor_scalars: tuple[str, ...]  # the rule's per-parameter 0-dim float32 state, beside the moments
    kernels_negate = False  # whether the kernels negate the gradient under maximize=True themselves

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self._check_group(defaults, f"{type(self).__name__}()")
        self._global_step = 0
        self._last_stats: SpikeStats | None = None
        super().__init__(params, defaults)

    @property
    def allowed_group_keys(self) -> frozenset[str]:
        return frozenset((*_GROUP_KEYS, *SHARED_OPTIONS, *self.options))

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The keys every parameter's saved state holds."""
        return (*self.tensor_scalars, *MOMENT_KEYS, "reset_number")

    # -- what a rule brings ---------------------------------------------------------------------------

    def _check_options(self, group: dict[str, Any], where: str) -> None:
        """Raise ValueError naming the option when one of the rule's own options is out of range."""
        raise NotImplementedError

    def _plan(self, group: dict[str, Any], s: int) -> StepPlan:
        """What global step ``s`` means for ``group`` (resets, warmup, decays): passed to ``_scalars``."""
        raise NotImplementedError

    def _kept_draw(self, p: Tensor, group: dict[str, Any], index: int, reset: int) -> KeptDraw | None:
        """Which entries of ``p`` keep momentum after reset number ``reset``; None (the default): all.

        ``index`` counts the optimizer's parameters across groups (a stable identity of ``p``).
        """
        return None

    def _kernel_state(self, p: Tensor, state: dict[str, Any], moments: Float32Moments | QuantizedMoments,
                      reset: bool) -> Any:
        """The kernels' view of ``p``'s state; ``reset``: this step resets its moments (already zeroed)."""
        raise NotImplementedError

    def _scalars(self, group: dict[str, Any], plan: Any) -> Any:
        """The group's scalars of this step, as the kernels take them."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Check every hyperparameter of a group; errors name the option and its accepted range."""
        lr = group["lr"]
        check_number(f"lr ({where})", float(lr) if isinstance(lr, Tensor) else lr, low=0.0)
        check_betas(f"betas ({where})", group["betas"])
        check_number(f"eps ({where})", group["eps"], low=0.0)
        check_number(f"weight_decay ({where})", group["weight_decay"], low=0.0)
        check_int(f"reset_interval ({where})", group["reset_interval"])
        check_state_bits(group["state_bits"], where)
        check_kernel_flags(group, where)
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"invalid maximize={group['maximize']!r} ({where}): accepted values are True, "
                             "False")
        self._check_options(group, where)

    def _parameter_state(self, p: Tensor, group: dict[str, Any], index: int, plan: StepPlan) -> Any:
        """Create ``p``'s state, or reset its moments when its group's schedule has reset since its last
        step; return the kernels' view of it."""
        state = self.state[p]
        local = local_tensor(p)
        eight = quantizes(p, group["state_bits"])
        check_unchanged(state, eight, index, group)
        fresh = not state
        if fresh:
            for key in self.tensor_scalars:
                state[key] = torch.zeros((), dtype=torch.float32, device=local.device)
        reset = not fresh and state["reset_number"] != plan.reset_number
        if fresh or reset:
            state["reset_number"] = plan.reset_number
            new_moments(state, p, eight, self._kept_draw(p, group, index, plan.reset_number))
        return self._kernel_state(p, state, stored_moments(state, local, eight), reset)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, gate: Tensor | None = None) -> Any:
        """Perform one optimization step; ``gate`` (0-dim bool tensor) False skips it on device."""
        loss, s = self._advance(closure)
        stepped, clipped, nonfinite, resets = [], [], [], []
        index = -1
        for group_index, group in enumerate(self.param_groups):
            plan = self._plan(group, s)
            if plan.reset_number != reset_number(group, s - 1):
                resets.append(MomentumReset(group_index, plan.reset_number))
            params, grads, states = [], [], []
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use dense gradients")
                states.append(self._parameter_state(p, group, index, plan))
                stepped.append(p)
                params.append(local_tensor(p))
                grads.append(local_tensor(p.grad))
            if not params:
                continue
            if group["maximize"] and not self.kernels_negate:
                grads = torch._foreach_neg(grads)
            kernel = select_kernel(self.kernels, group["foreach"], group["fused"], params[0].device)
            result = kernel(params, grads, states, gate, self._scalars(group, plan))
            clipped.extend(result.clipped)
            nonfinite.extend(result.nonfinite)
        device = local_tensor(stepped[0]).device if stepped else torch.device("cpu")
        self._last_stats = SpikeStats(step=s, params=stepped, clipped=stack_counts(clipped, device),
                                      nonfinite=stack_counts(nonfinite, device), resets=tuple(resets))
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
        """Per-parameter clip and non-finite counts of the last step, on device, and the groups whose momentum
        was reset; None before any step."""
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
        groups = loadable_groups(state_dict, self.param_groups, name)
        saved_state = state_dict["state"]
        for key, entry in saved_state.items():
            missing = [k for k in self.state_keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ValueError(f"corrupt {name} state for parameter {key}: missing {missing}")
        stripped = dict(state_dict)
        stripped["param_groups"] = [{k: v for k, v in g.items() if k != self.step_key} for g in groups]
        super().load_state_dict(stripped)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)  # an option added after the state dict was saved (maximize)
        saved_ids = chain.from_iterable(g["params"] for g in groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            if saved_id in saved_state:
                self.state[p] = {k: v.to(device=local_tensor(p).device, copy=True) if isinstance(v, Tensor)
                                 else v for k, v in saved_state[saved_id].items()}
        for i, group in enumerate(self.param_groups):
            self._check_group(group, f"loaded {name} param group {i}")
        self._global_step = next(iter(steps))
