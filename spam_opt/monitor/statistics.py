"""Gradient statistics: per-step reductions on device, and the running means they are scored against on host.

A step costs a few fused reductions (``_foreach_norm``) whose results stay on device; the host reads a whole
logging interval at once and does the scoring there, in float64, where a running mean over thousands of
steps keeps its precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from spam_opt._distributed import all_reduce_per_tensor, local_tensor, shard_groups

_TINY = torch.finfo(torch.float32).tiny


def _max_abs(grads: list[Tensor]) -> Tensor:
    """max|g| per tensor, float32."""
    if grads[0].device.type == "cuda":
        return torch.stack(torch._foreach_norm(grads, math.inf, dtype=torch.float32))  # one fused kernel
    # On CPU the infinity norm runs ~20x slower than a min/max pass, which gives the same value.
    extremes = torch.stack([torch.stack(torch.aminmax(g)) for g in grads])
    return extremes.abs().amax(dim=1).float()


class GradientReductions:
    """Per-parameter reductions of one step's gradients, as one device vector (no host sync).

    The vector holds, per parameter: ‖g‖², max|g| and, in ``element`` mode, the largest element-wise Gradient
    Spike Score and the number of entries above ``gss_threshold``. Sharded (FSDP2) gradients are all-reduced
    so that every rank holds the norms of the full parameters.
    """

    def __init__(self, params: Sequence[Tensor], mode: str, gss_threshold: float) -> None:
        self.params = list(params)
        self.element = mode == "element"
        self.gss_threshold = gss_threshold
        self.fields = 4 if self.element else 2
        self.groups = [shard_groups(p) for p in self.params]
        self.sharded = any(self.groups)
        self._index: dict[tuple[int, ...], Tensor] = {}
        # element mode: running sum of |g| per entry and the number of steps it covers
        self.abs_sums: list[Tensor | None] = [None] * len(self.params)
        self.counts = [0] * len(self.params)

    def __call__(self, present: Sequence[int]) -> Tensor:
        """The reductions of the gradients of ``params[i] for i in present``, zeros for the others."""
        grads = [local_tensor(self.params[i].grad).detach() for i in present]
        device = grads[0].device
        fields = [torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square(), _max_abs(grads)]
        if self.element:
            fields.extend(self._element_scores(present, grads))
        stacked = torch.stack(fields)  # [fields, len(present)]
        P = len(self.params)
        if len(present) == P:
            out = stacked
        else:
            key = tuple(present)
            if key not in self._index:
                self._index[key] = torch.tensor(key, device=device)
            out = torch.zeros(self.fields, P, device=device).index_copy_(1, self._index[key], stacked)
        if self.sharded:
            # Sums (‖g‖², spiking entries) add up over shards, maxima take the max; a replicated parameter's
            # values are already complete.
            ops = ("sum", "max", "max", "sum")[:self.fields]
            out = torch.stack([all_reduce_per_tensor(row, self.groups, op) for row, op in zip(out, ops)])
        return out.reshape(-1)

    def _element_scores(self, present: Sequence[int], grads: list[Tensor]) -> list[Tensor]:
        sums = []
        for i, g in zip(present, grads):
            if self.abs_sums[i] is None:
                self.abs_sums[i] = torch.zeros_like(g, dtype=torch.float32,
                                                    memory_format=torch.contiguous_format)
            self.counts[i] += 1
            sums.append(self.abs_sums[i])
        steps = [float(self.counts[i]) for i in present]
        if _cpp_takes(grads):
            scores = torch.ops.spam_opt_monitor.gradient_spike_scores_(sums, grads, steps, self.gss_threshold)
            return list(scores)
        return element_scores_torch(sums, grads, steps, self.gss_threshold)


def element_scores_torch(sums: list[Tensor], grads: list[Tensor], steps: list[float],
                         threshold: float) -> list[Tensor]:
    """Score |g| against the running sums, then add it; per tensor the largest element-wise GSS and the count
    above ``threshold``.

    GSS = |g_t| / mean_{j<=t} |g_j| = |g_t| * t / sum_{j<=t} |g_j|. Raising a zero sum to the smallest normal
    float makes an entry that was always 0 score 0, and is lost in the next non-zero |g|. An entry that scores
    above ``threshold`` enters its sum at the value that would have scored exactly ``threshold`` (see
    ``RunningScores``). The C++ op (``csrc/gss_cpu.cpp``) does the same in one pass per tensor; this is its
    reference and other devices' path.
    """
    largest, above = [], []
    for s, g, t in zip(sums, grads, steps):
        a = g.float().abs()
        gss = a / (s + a).clamp_min(_TINY) * t
        spike = gss > threshold
        recorded = torch.where(spike, s * threshold / (t - threshold), a) if t > threshold else a
        s.copy_((s + recorded).clamp_min(_TINY))
        largest.append(gss.max())
        above.append(spike.sum())
    return [torch.stack(largest).float(), torch.stack(above).float()]


_GSS_SOURCE = Path(__file__).with_name("csrc") / "gss_cpu.cpp"


def _cpp_takes(grads: list[Tensor]) -> bool:
    """Whether the C++ op scores these gradients: contiguous float32 on CPU, and the op builds here."""
    if not all(g.device.type == "cpu" and g.dtype == torch.float32 and g.is_contiguous() for g in grads):
        return False
    from spam_opt._cpp_build import library_unavailable_reason

    return library_unavailable_reason(_GSS_SOURCE) is None


class RunningScores:
    """Host-side running sums of ‖g‖ and max|g| per parameter, and the scores of new values against them.

    A score is the value over its mean over the steps so far, the current one included (the paper's Gradient
    Spike Score). A value that scores above ``threshold`` enters the sum at the value that would have scored
    exactly ``threshold``: recorded in full, one spike would raise the mean enough to hide the next (a 1000x
    spike at step 60 alone makes a second one at step 100 score 48).
    """

    def __init__(self, num_params: int, threshold: float) -> None:
        self.threshold = threshold
        self.n = [0] * num_params
        self.sums = [[0.0, 0.0] for _ in range(num_params)]  # per parameter: sum of ‖g‖, sum of max|g|

    def update(self, i: int, norm: float, largest: float) -> tuple[float, float]:
        """Add a step's values for parameter ``i``; return (norm score, max score)."""
        self.n[i] += 1
        n, sums = self.n[i], self.sums[i]
        scores = []
        for k, value in enumerate((norm, largest)):
            total = sums[k] + value
            score = value * n / total if total > 0 else 0.0
            sums[k] += self.threshold * sums[k] / (n - self.threshold) if score > self.threshold else value
            scores.append(score)
        return scores[0], scores[1]
