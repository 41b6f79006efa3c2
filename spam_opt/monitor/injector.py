"""``SpikeInjector``: deterministic gradient spikes for tests and experiments."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn


class SpikeInjector:
    """Multiply chosen gradients, or a random fraction of their entries, by ``factor`` at chosen steps.

    Parameters whose name matches the regular expression ``param_pattern`` (``re.search``; all trainable
    parameters when None) are hit at each step of ``steps``. With ``fraction`` < 1 only that fraction of
    each matched gradient's entries is multiplied (drawn afresh at every step from ``seed`` and the step, so
    a run repeats its injections exactly): spikes on single entries, as the SPAM paper measures them, rather
    than scaled copies of whole gradients. Call ``apply(step)`` after backward and before the monitor and
    the optimizer see the gradients.

    Example::

        injector = SpikeInjector(model, steps=[200, 400], factor=1000.0, param_pattern="proj.weight",
                                 fraction=1e-3)
        loss.backward()
        injector.apply(step)  # True at steps 200 and 400
    """

    def __init__(self, model: nn.Module, steps: Iterable[int], factor: float = 1000.0,
                 param_pattern: str | None = None, fraction: float = 1.0, seed: int = 0) -> None:
        steps = list(steps)
        bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 1]
        if bad:
            raise ValueError(f"invalid steps {bad}: accepted values are integers >= 1")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise ValueError(f"invalid factor={factor!r}: accepted range is a finite real number")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"invalid fraction={fraction!r}: accepted range is (0, 1]")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if param_pattern is not None:
            try:
                regex = re.compile(param_pattern)
            except re.error as exc:
                raise ValueError(f"invalid param_pattern={param_pattern!r}: not a regular expression "
                                 f"({exc})") from exc
            matched = [(n, p) for n, p in named if regex.search(n)]
            if not matched:
                sample = ", ".join(n for n, _ in named[:8])
                raise ValueError(f"param_pattern={param_pattern!r} matches no trainable parameter; "
                                 f"names look like: {sample}")
            named = matched
        self.steps = frozenset(steps)
        self.factor, self.fraction, self.seed = float(factor), float(fraction), seed
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]

    @torch.no_grad()
    def apply(self, step: int) -> bool:
        """Scale the matched gradients if ``step`` is an injection step; return whether it did."""
        if step not in self.steps:
            return False
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return False
        if self.fraction == 1.0:
            torch._foreach_mul_(grads, self.factor)
            return True
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        for g in grads:
            hit = torch.rand(g.shape, generator=gen) < self.fraction
            g.mul_(torch.where(hit.to(g.device), self.factor, 1.0).to(g.dtype))
        return True
