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
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch
from torch import Tensor

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


def chunks(kinds: Sequence[Hashable]) -> list[list[int]]:
    """Positions grouped by kind, cut into chunks of at most ``CHUNK``."""
    by_kind: dict[Hashable, list[int]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(i)
    return [pos[s:s + CHUNK] for pos in by_kind.values() for s in range(0, len(pos), CHUNK)]


def contiguous(*tensors: Tensor) -> bool:
    """Whether the compiled steps take these tensors (they address entries through flat views)."""
    return all(t.is_contiguous() for t in tensors)


@functools.cache
def compiled_unavailable_reason(device: torch.device) -> str | None:
    """Why the compiled steps cannot run on ``device``, or None when they can (CPU has the C++ kernels)."""
    if device.type != "cuda":
        return f"the compiled step runs on CUDA tensors, got {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch.compile on CUDA needs triton (pip install triton)"
    return None
