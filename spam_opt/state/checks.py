"""The checks that keep a parameter's state in the layout its group implies: ``state_bits`` values, a
``state_bits`` that changed during a run, and a loaded state dict (8-bit and float32 moments never convert
into each other)."""

from __future__ import annotations

from typing import Any

import torch

from spam_opt.state.kept import BITMAP_KEY
from spam_opt.state.layout import MOMENT_KEYS, SCALE_KEYS
from spam_opt.state.quantized import STATE_BITS, quantizes


def check_state_bits(value: Any, where: str) -> None:
    if isinstance(value, bool) or value not in STATE_BITS:
        raise ValueError(f"invalid state_bits={value!r} ({where}): accepted values are "
                         f"{', '.join(map(str, STATE_BITS))}")


def check_unchanged(state: dict[str, Any], eight: bool, index: int, group: dict[str, Any]) -> None:
    """Refuse a param group whose ``state_bits`` changed after its parameter's moments were made."""
    if MOMENT_KEYS[0] in state and (SCALE_KEYS[0] in state) != eight:
        raise ValueError(
            f"parameter {index} holds {32 if eight else 8}-bit moments but its param group now has "
            f"state_bits={group['state_bits']}; state_bits cannot change during a run (set it when "
            "building the optimizer)"
        )


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
            if not isinstance(entry, dict) or not set(MOMENT_KEYS) <= entry.keys():
                continue  # the base class names the missing keys
            if quantizes(p, saved["state_bits"]):
                missing = [k for k in SCALE_KEYS if k not in entry]
                if saved.get("density", 1.0) < 1.0 and BITMAP_KEY not in entry:
                    missing.append(BITMAP_KEY)
                codes = (entry["exp_avg"].dtype, entry["exp_avg_sq"].dtype)
                if missing or codes != (torch.int8, torch.uint8):
                    raise ValueError(f"corrupt {name} state for parameter {key}: state_bits=8 needs int8 and "
                                     f"uint8 codes with their scales, missing {missing}")
            elif SCALE_KEYS[0] in entry:
                raise ValueError(f"corrupt {name} state for parameter {key}: 8-bit moments in a group with "
                                 f"state_bits={saved['state_bits']}")
