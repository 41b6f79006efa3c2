"""Hyperparameter checks shared by the optimizers: every error names the option and its accepted range."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) or _is_scalar_tensor(x)


def _is_scalar_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.numel() == 1


def _fail(name: str, value: Any, accepted: str) -> None:
    raise ValueError(f"invalid {name}={value!r}: accepted range is {accepted}")


def check_number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite number inside the (half-)open interval given."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    accepted = f"{lo}{low}, {high}{hi}"
    if not _is_number(value):
        _fail(name, value, f"a real number in {accepted}")
    v = float(value)
    if math.isnan(v) or (low_open and v <= low) or (not low_open and v < low) \
            or (high_open and v >= high) or (not high_open and v > high):
        _fail(name, value, accepted)


def check_int(name: str, value: Any, *, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, value, f"an integer >= {low}")


def check_betas(name: str, betas: Any, count: int = 2) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        _fail(name, betas, f"a tuple of {count} numbers, each in [0, 1)")
    for i, b in enumerate(betas):
        check_number(f"{name}[{i}]", b, low=0.0, high=1.0, high_open=True)


def check_known_keys(group: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(group) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in {where}; "
            f"accepted options are: {', '.join(sorted(allowed))}"
        )


def check_kernel_flags(group: Mapping[str, Any], where: str) -> None:
    """``foreach`` and ``fused``: each None, True or False, and not both True."""
    for flag in ("foreach", "fused"):
        if group[flag] not in (None, True, False):
            raise ValueError(f"invalid {flag}={group[flag]!r} ({where}): accepted values are None, True, "
                             "False")
    if group["foreach"] and group["fused"]:
        raise ValueError(f"foreach=True and fused=True ({where}): choose at most one of them")
