"""The optimizers' C++ ops (``torch.ops.spam_opt.*``: SPAM's and Stable-SPAM's steps, sparse momentum's
draw): their source, whether they can run here, and which tensors they take. ``spam_opt._cpp_build`` builds
and loads the source."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from spam_opt._cpp_build import library_unavailable_reason

OPTIMIZER_SOURCE = Path(__file__).with_name("csrc") / "spam_cpu.cpp"


def optimizer_ops_unavailable_reason() -> str | None:
    """Build and load the optimizers' C++ ops (once per process); why they cannot run, or None."""
    return library_unavailable_reason(OPTIMIZER_SOURCE)


def optimizer_ops_take(p: Tensor, g: Tensor, m: Tensor) -> bool:
    """Whether the optimizers' C++ ops take a parameter: contiguous float32 CPU parameter, grad, moments."""
    return (p.device.type == "cpu" and p.dtype == torch.float32 and g.dtype == torch.float32
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous())
