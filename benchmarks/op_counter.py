"""Counting the kernels a piece of code would launch on a GPU, while it runs on CPU tensors.

On a GPU small work is launch-bound: what it costs is the number of kernels, not their arithmetic. Each
aten op that reaches the dispatcher and is not a view launches about one kernel (a ``_foreach_`` op a few,
for all its tensors at once), and each launch of a Triton kernel one. ``OpCounter`` counts the first (views
and host reads of a value apart), ``CountedLaunches`` wraps a Triton kernel to count the second.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, the views among them, and the reads of a value to the host
    (``.item()``: torch's own optimizers read their CPU step counts so)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.views = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.views += bool(func.is_view)
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        """The ops that launch a kernel: neither views nor reads."""
        return self.ops - self.views - self.reads


class CountedLaunches:
    """A Triton kernel that counts its launches, run outside any op counter (Triton's interpreter copies
    between torch and numpy on CPU, which launch nothing on a GPU), or not run at all with ``run=False``: the
    interpreter is slow, and how many launches a step makes does not depend on what they compute."""

    def __init__(self, kernel: Any, run: bool = True) -> None:
        self.kernel, self.run, self.count = kernel, run, 0

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if self.run:
                with _disable_current_modes():
                    return self.kernel[grid](*args, **kwargs)
            return None
        return launch
