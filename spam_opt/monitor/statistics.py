"""Gradient statistics: per-step reductions on device, and the running means they are scored against on host.

A step costs a few fused reductions (``_foreach_norm``) whose results stay on device; the host reads a whole
logging interval at once and does the scoring there, in float64, where a running mean over thousands of
steps keeps its precision.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_TINY = torch.finfo(torch.float32).tiny


def _local(t: Tensor) -> Tensor:
    """The rank-local block of a DTensor (FSDP2 shard), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _shard_groups(params: Sequence[Tensor]) -> tuple[list[bool], list[Any]]:
    """Which parameters are sharded, and the process groups a sum over their shards must span."""
    sharded, layouts = [], set()
    for p in params:
        placements = getattr(p, "placements", ())
        is_sharded = any(pl.is_shard() for pl in placements)
        sharded.append(is_sharded)
        if is_sharded:
            dims = tuple(d for d, pl in enumerate(placements) if pl.is_shard())
            layouts.add((p.device_mesh, dims))
    if len(layouts) > 1:
        raise ValueError(
            "GradientSpikeMonitor needs every sharded parameter on the same device mesh and shard dimensions "
            f"(found {len(layouts)} layouts); monitor each differently sharded sub-model with its own monitor"
        )
    if not layouts:
        return sharded, []
    mesh, dims = layouts.pop()
    return sharded, [mesh.get_group(d) for d in dims]


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
        self.sharded, self.groups = _shard_groups(self.params)
        self._sharded_mask: Tensor | None = None
        self._index: dict[tuple[int, ...], Tensor] = {}
        # element mode: running sum of |g| per entry and the number of steps it covers
        self.abs_sums: list[Tensor | None] = [None] * len(self.params)
        self.counts = [0] * len(self.params)

    def __call__(self, present: Sequence[int]) -> Tensor:
        """The reductions of the gradients of ``params[i] for i in present``, zeros for the others."""
        grads = [_local(self.params[i].grad).detach() for i in present]
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
        if self.groups:
            out = self._all_reduce(out)
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

    def _all_reduce(self, out: Tensor) -> Tensor:
        import torch.distributed as dist

        if self._sharded_mask is None:
            self._sharded_mask = torch.tensor(self.sharded, device=out.device)
        # Sums (‖g‖², spiking entries) add up over shards; maxima take the max. A replicated parameter's
        # values are already complete, so the sum keeps its local value.
        sums = out[[0, 3]] if self.element else out[[0]]
        reduced_sums = torch.where(self._sharded_mask, sums, 0.0)
        maxima = out[[1, 2]] if self.element else out[[1]]
        for group in self.groups:
            dist.all_reduce(reduced_sums, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
        sums = torch.where(self._sharded_mask, reduced_sums, sums)
        if self.element:
            return torch.stack([sums[0], maxima[0], maxima[1], sums[1]])
        return torch.stack([sums[0], maxima[0]])


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


class LossSpikes:
    """Loss against the mean and standard deviation of the previous ``window`` finite losses.

    A spike enters the history at the bound it broke (``mean + threshold * std``), not at its own value:
    otherwise one spike inflates the deviation and the rest of a burst passes unflagged. A lasting rise
    still moves the history up, a bound at a time, until it is no longer a spike.
    """

    def __init__(self, window: int, threshold: float, min_history: int = 8) -> None:
        self.history: deque[float] = deque(maxlen=window)
        self.threshold = threshold
        self.min_history = min(min_history, window)

    def score(self, loss: float) -> float | None:
        """The z-score of ``loss`` (None while the history is too short or flat); then remember it."""
        z = None
        if len(self.history) >= self.min_history:
            mean = math.fsum(self.history) / len(self.history)
            std = math.sqrt(math.fsum((x - mean) ** 2 for x in self.history) / len(self.history))
            if std > 0:
                z = (loss - mean) / std
                if z > self.threshold:
                    loss = mean + self.threshold * std
        self.history.append(loss)
        return z
