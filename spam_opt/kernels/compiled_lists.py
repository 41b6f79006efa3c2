"""What the compiled steps share: one ``torch.compile``d graph per chunk of like tensors, not per parameter.

A compiled step takes lists (parameters, gradients, moments, ...) and loops over them inside the compiled
function, so dynamo traces one graph for the whole chunk and Inductor emits its kernels (Triton on a GPU, C++
on CPU) with one Python call per chunk. Graphs stay few and are reused step after step:

* tensors enter flat (1-D; 8-bit moments: rows of the last dimension), so a parameter's rank is no part of
  the graph;
* shapes are dynamic and not duck-sized (two tensors that happen to share a size are not assumed to keep
  sharing it), so any chunk of the same kind and length reuses a graph, and the kept entries of sparse
  momentum can change in number at every reset without a recompile;
* a group's tensors are sorted into kinds (dtypes, float32 or 8-bit moments, dense or sparse, one entry or
  more: dynamo specialises sizes 0 and 1) and each kind cut into chunks of ``CHUNK``: a kind of k tensors
  takes at most two graphs (a full chunk, and the rest);
* every value that changes as training goes on (learning rate, warmup, decays, clip threshold, gate) is a
  0-dim device tensor, made by a fill (no copy from the host, so no sync).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.quantized import QuantizedTensorState
from spam_opt.kernels.result import Kernel, KernelResult, partition

# Tensors per graph: larger chunks mean fewer launches per step but longer compiles and bigger graphs.
CHUNK = 32
# Room for every (kind, chunk length) a model has; past dynamo's default of 8 graphs a function silently
# runs eager (correct, but slow).
RECOMPILE_LIMIT = 64


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process (dynamic shapes, one graph or an error)."""
    return torch.compile(fn, dynamic=True, fullgraph=True)


@contextlib.contextmanager
def compile_settings() -> Iterator[None]:
    """Dynamo's settings of the compiled steps (see the module docstring), for the duration of a step."""
    import torch.fx.experimental._config as fx_config

    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), \
            fx_config.patch(use_duck_shape=False):
        yield


def device_scalars(values: Sequence[float], device: torch.device) -> list[Tensor]:
    """0-dim float32 tensors on ``device``, each made by a fill: no host-to-device copy, no sync."""
    return [torch.full((), float(v), dtype=torch.float32, device=device) for v in values]


def device_flags(values: Sequence[bool], device: torch.device) -> Tensor:
    """Host bools (a schedule's reset flags) as a bool device vector, made by fills: no copy from the host."""
    if all(v == values[0] for v in values):
        return torch.full((len(values),), values[0], dtype=torch.bool, device=device)
    return torch.stack([torch.full((), v, dtype=torch.bool, device=device) for v in values])


def chunks(kinds: Sequence[Hashable]) -> list[list[int]]:
    """Positions grouped by kind, cut into chunks of at most ``CHUNK``."""
    by_kind: dict[Hashable, list[int]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(i)
    return [pos[s:s + CHUNK] for pos in by_kind.values() for s in range(0, len(pos), CHUNK)]


def graphs_needed(kinds: Sequence[Hashable]) -> int:
    """How many graphs a group of tensors of these kinds compiles: one per (kind, chunk length)."""
    return len({(kinds[chunk[0]], len(chunk)) for chunk in chunks(kinds)})


def contiguous(*tensors: Tensor) -> bool:
    """Whether the compiled steps take these tensors (they address entries through flat views)."""
    return all(t.is_contiguous() for t in tensors)


# The 8-bit codes and scales of one parameter, in QuantizedMoments' field order.
Codes = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class FlatGroup:
    """A group's parameters and moments as the compiled steps take them: flat views (8-bit parameters as
    rows of their last dimension, which the 8-bit layout's blocks follow), float32 moments or 8-bit codes."""

    params: list[Tensor]
    exp_avgs: list[Tensor | None]
    exp_avg_sqs: list[Tensor | None]
    codes: list[Codes | None]

    @classmethod
    def of(cls, params: list[Tensor], states: list[Any]) -> FlatGroup:
        group = cls([], [], [], [])
        for p, st in zip(params, states):
            if isinstance(st, QuantizedTensorState):
                q = st.moments
                group.params.append(p.view(-1, q.row_length))
                group.exp_avgs.append(None)
                group.exp_avg_sqs.append(None)
                group.codes.append((q.exp_avg, q.exp_avg_sq, q.exp_avg_scale, q.exp_avg_sq_scale))
            else:
                group.params.append(p.view(-1))
                group.exp_avgs.append(st.exp_avg.view(-1))
                group.exp_avg_sqs.append(st.exp_avg_sq.view(-1))
                group.codes.append(None)
        return group


def with_fallback(takes: Iterable[bool], step: Kernel, fallback: Kernel, params: list[Tensor],
                  grads: list[Tensor], states: list[Any], gate: Tensor | None, h: Any) -> KernelResult:
    """``step`` on the tensors it takes, ``fallback`` (foreach) on the others."""
    parts: list[tuple[list[int], KernelResult]] = []
    for positions, kernel in zip(partition(takes), (step, fallback)):
        if positions:
            parts.append((positions, kernel([params[i] for i in positions], [grads[i] for i in positions],
                                            [states[i] for i in positions], gate, h)))
    return KernelResult.merge(len(params), parts)


def run_chunks(kinds: Sequence[Hashable], call: Callable[[list[int]], tuple[list[Tensor], list[Tensor]]],
               gate: Tensor) -> KernelResult:
    """``call(chunk)`` (a compiled graph's (clipped, nonfinite)) for every chunk of like tensors."""
    clipped: list[Tensor] = [gate] * len(kinds)
    nonfinite: list[Tensor] = [gate] * len(kinds)
    with compile_settings():
        for chunk in chunks(kinds):
            c, f = call(chunk)
            for i, ci, fi in zip(chunk, c, f):
                clipped[i], nonfinite[i] = ci, fi
    return KernelResult(clipped, nonfinite)
