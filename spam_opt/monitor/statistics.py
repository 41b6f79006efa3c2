"""Gradient statistics: per-step reductions on device, and the running means they are scored against on host.

A step costs a few fused reductions (``_foreach_norm``) whose results stay on device; the host reads a whole
logging interval at once and does the scoring there, in float64, where a running mean over thousands of
steps keeps its precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        abs_grads = torch._foreach_abs(grads)
        sums = []
        for i, a in zip(present, abs_grads):
            if self.abs_sums[i] is None:
                self.abs_sums[i] = torch.zeros_like(a, dtype=torch.float32)
            self.counts[i] += 1
            sums.append(self.abs_sums[i])
        torch._foreach_add_(sums, abs_grads)
        # GSS = |g_t| / mean_{j<=t} |g_j| = |g_t| * t / sum_{j<=t} |g_j|. Raising a zero sum to the smallest
        # normal float makes an entry that was always 0 score 0, and is lost in the next non-zero |g|.
        torch._foreach_clamp_min_(sums, _TINY)
        gss = abs_grads  # computed in place: |g| is not needed any more
        torch._foreach_div_(gss, sums)
        torch._foreach_mul_(gss, [float(self.counts[i]) for i in present])
        largest = torch.stack(torch._foreach_max(gss)).float()
        above = torch.stack([(s > self.gss_threshold).sum() for s in gss]).float()
        return [largest, above]


class RunningScores:
    """Host-side running means of ‖g‖ and max|g| per parameter, and the scores of new values against them."""

    def __init__(self, num_params: int) -> None:
        self.n = [0] * num_params
        self.norm_sum = [0.0] * num_params
        self.max_sum = [0.0] * num_params

    def update(self, i: int, norm: float, largest: float) -> tuple[float, float]:
        """Add a step's values for parameter ``i``; return (norm score, max score), each ``value / mean``."""
        self.n[i] += 1
        self.norm_sum[i] += norm
        self.max_sum[i] += largest
        n = self.n[i]
        norm_score = norm * n / self.norm_sum[i] if self.norm_sum[i] > 0 else 0.0
        max_score = largest * n / self.max_sum[i] if self.max_sum[i] > 0 else 0.0
        return norm_score, max_score
