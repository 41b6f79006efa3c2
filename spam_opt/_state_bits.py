"""The ``state_bits`` option that SPAM and StableSPAM share: its validation, and the checks that keep 8-bit
and float32 moments apart (they never convert into each other).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.quantized_state import STATE_BITS, QuantizedMoments, quantizes


def check_state_bits(value: Any, where: str) -> None:
    if isinstance(value, bool) or value not in STATE_BITS:
        raise ValueError(f"invalid state_bits={value!r} ({where}): accepted values are "
                         f"{', '.join(map(str, STATE_BITS))}")


def check_unchanged(state: dict[str, Any], eight: bool, index: int, group: dict[str, Any]) -> None:
    """Refuse a param group whose ``state_bits`` changed after its parameter's moments were made."""
    if "exp_avg" in state and ("exp_avg_scale" in state) != eight:
        raise ValueError(
            f"parameter {index} holds {32 if eight else 8}-bit moments but its param group now has "
            f"state_bits={group['state_bits']}; state_bits cannot change during a run (set it when "
            "building the optimizer)"
        )


def store_moments(state: dict[str, Any], local: Tensor, kept_bits: Tensor | None,
                  stored: int | None = None) -> None:
    """Zero 8-bit moments for a (rank-local) parameter, kept in ``state`` under their layout's keys;
    ``stored``: the number of kept entries, when known on the host."""
    q = QuantizedMoments.zeros(local.numel(), local.shape[-1], kept_bits, device=local.device, stored=stored)
    state.update(exp_avg=q.exp_avg, exp_avg_sq=q.exp_avg_sq, exp_avg_scale=q.exp_avg_scale,
                 exp_avg_sq_scale=q.exp_avg_sq_scale)


def stored_moments(state: dict[str, Any], local: Tensor) -> QuantizedMoments:
    """The 8-bit moments that ``store_moments`` (or a loaded state dict) put in ``state``."""
    return QuantizedMoments(state["exp_avg"], state["exp_avg_sq"], state["exp_avg_scale"],
                            state["exp_avg_sq_scale"], local.shape[-1], state.get("kept_bits"))


def loadable_groups(state_dict: Any, param_groups: list[dict[str, Any]], name: str) -> Any:
    """The saved param groups, each with its ``state_bits`` (32 when saved before the option existed), after
    checking that they match the optimizer's and that every saved state has its layout's keys and dtypes."""
    groups = [g if "state_bits" in g else {**g, "state_bits": 32} for g in state_dict["param_groups"]]
    for i, (saved, current) in enumerate(zip(groups, param_groups)):
        if saved["state_bits"] != current["state_bits"]:
            raise ValueError(
                f"this state dict was saved with state_bits={saved['state_bits']} for param group "
                f"{i}, and this {name} has state_bits={current['state_bits']}; build the optimizer "
                f"with state_bits={saved['state_bits']} to resume it (moments are not converted)"
            )
    _check_layouts(state_dict.get("state"), groups, param_groups, name)
    return groups


def _check_layouts(state: Any, saved_groups: list[dict[str, Any]], groups: list[dict[str, Any]],
                   name: str) -> None:
    """Each saved parameter state has the keys and code dtypes of the layout its group and shape imply."""
    if not isinstance(state, dict):
        return
    for saved, group in zip(saved_groups, groups):
        for key, p in zip(saved.get("params", []), group["params"]):
            entry = state.get(key)
            if not isinstance(entry, dict) or not {"exp_avg", "exp_avg_sq"} <= entry.keys():
                continue  # the base class names the missing keys
            if quantizes(p, saved["state_bits"]):
                missing = [k for k in ("exp_avg_scale", "exp_avg_sq_scale") if k not in entry]
                if saved.get("density", 1.0) < 1.0 and "kept_bits" not in entry:
                    missing.append("kept_bits")
                codes = (entry["exp_avg"].dtype, entry["exp_avg_sq"].dtype)
                if missing or codes != (torch.int8, torch.uint8):
                    raise ValueError(f"corrupt {name} state for parameter {key}: state_bits=8 needs int8 and "
                                     f"uint8 codes with their scales, missing {missing}")
            elif "exp_avg_scale" in entry:
                raise ValueError(f"corrupt {name} state for parameter {key}: 8-bit moments in a group with "
                                 f"state_bits={saved['state_bits']}")
