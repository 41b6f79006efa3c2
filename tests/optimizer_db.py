"""The optimizers the contract tests run over (as torch's ``optim_db``): one entry per optimizer setting.

An optimizer joins every contract test (``test_optimizer_contract.py``) by adding one ``OptimizerInfo`` here;
its own tests then keep only what is specific to it (its float64 oracle, its spike rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from spam_opt import SPAM, StableSPAM


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    make: Callable[..., Any]  # make(params, **options) -> optimizer
    schedule: dict[str, Any]  # options that make resets and clipping happen within a few dozen steps
    save_points: tuple[int, ...]  # steps to save and resume at (around the resets of ``schedule``)
    group_option: dict[str, Any]  # a valid option of this optimizer to set on an added param group
    bad_options: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (options, error match)
    paths: tuple[tuple[str, dict[str, Any]], ...] = (
        ("reference", dict(foreach=False)), ("foreach", dict(foreach=True)), ("fused", dict(fused=True)),
    )


_COMMON_BAD = [
    (dict(lr=-1.0), "lr"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(-0.1, 0.99)), "betas"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(reset_interval=-5), "reset_interval"),
    (dict(foreach="yes"), "foreach"),
    (dict(foreach=True, fused=True), "foreach=True and fused=True"),
    (dict(maximize="yes"), "maximize"),
]
_SPAM_BAD = [
    *_COMMON_BAD,
    (dict(eps=-1e-8), "eps"),
    (dict(density=0.0), "density"),
    (dict(density=1.5), "density"),
    (dict(threshold=-1.0), "threshold"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(clip_delay=2.5), "clip_delay"),
    (dict(reset_interval=100, warmup_steps=150), "warmup_steps"),
    (dict(state_bits=16), "state_bits.*accepted values are 8, 32"),
    (dict(state_bits=True), "state_bits"),
]
_SPAM_SCHEDULE = dict(lr=1e-2, weight_decay=0.05, reset_interval=20, warmup_steps=10, clip_delay=4,
                      threshold=20.0)
_STABLE_SCHEDULE = dict(lr=1e-2, weight_decay=0.05, reset_interval=10, total_steps=20)

OPTIMIZERS = [
    OptimizerInfo("SPAM", lambda params, **kw: SPAM(params, **kw), _SPAM_SCHEDULE, save_points=(12, 20),
                  group_option=dict(threshold=100.0), bad_options=_SPAM_BAD),
    OptimizerInfo("SPAM-density0.5", lambda params, **kw: SPAM(params, density=0.5, seed=3, **kw),
                  _SPAM_SCHEDULE, save_points=(3, 12, 19, 20, 27), group_option=dict(density=0.25),
                  bad_options=[]),
    OptimizerInfo("SPAM-8bit", lambda params, **kw: SPAM(params, state_bits=8, **kw), _SPAM_SCHEDULE,
                  save_points=(12, 20), group_option=dict(threshold=100.0)),
    OptimizerInfo("SPAM-8bit-density0.5",
                  lambda params, **kw: SPAM(params, state_bits=8, density=0.5, seed=3, **kw),
                  _SPAM_SCHEDULE, save_points=(3, 12, 19, 20, 27), group_option=dict(density=0.25)),
    OptimizerInfo("StableSPAM", lambda params, **kw: StableSPAM(params, **kw), _STABLE_SCHEDULE,
                  save_points=(9, 10, 17),
                  group_option=dict(theta=0.99),
                  bad_options=[*_COMMON_BAD, (dict(eps=0.0), "eps"), (dict(gamma1=1.0), "gamma1"),
                               (dict(gamma2=-0.1), "gamma2"), (dict(theta=1.5), "theta"),
                               (dict(total_steps=0), "total_steps"), (dict(total_steps=10.5), "total_steps"),
                               (dict(eta_min=2.0), "eta_min"),
                               (dict(state_bits=4), "state_bits.*accepted values are 8, 32")]),
    OptimizerInfo("StableSPAM-8bit", lambda params, **kw: StableSPAM(params, state_bits=8, **kw),
                  _STABLE_SCHEDULE, save_points=(9, 10, 17), group_option=dict(theta=0.99)),
]

INFOS = [pytest.param(info, id=info.name) for info in OPTIMIZERS]
INFO_PATHS = [pytest.param(info, flags, id=f"{info.name}-{path}")
              for info in OPTIMIZERS for path, flags in info.paths]
