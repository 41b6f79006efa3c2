"""What the Triton optimizer steps share: when they can run, their block size, and their launch grid.

The steps themselves are ``spam_opt.kernels.spam.triton_kernel`` and
``spam_opt.kernels.stable_spam.triton_kernel``: each launches a kernel per parameter (a few for
Stable-SPAM), whose programs each take ``BLOCK`` consecutive entries. Triton is imported only when a step
runs, so that spam_opt itself depends on torch alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import with_fallback
from spam_opt.kernels.result import Kernel, KernelResult

BLOCK = 1024  # entries per program: 4 KB of each float32 tensor it reads
# Programs per parameter of the reductions (Stable-SPAM's max|g| and norm): each loops over its share, and
# their partial results are reduced by torch in a fixed order, so that a step is deterministic.
REDUCTION_PROGRAMS = 256


# The oldest NVIDIA GPUs Triton compiles for; torch's Inductor refuses older ones at the same bound. On an
# older GPU a kernel fails deep in Triton's compiler at its first launch, not with a clear error.
MIN_CAPABILITY = (7, 0)


def gpu_too_old_for_triton(device: torch.device) -> str | None:
    """Why Triton cannot compile kernels for the CUDA ``device`` (an NVIDIA GPU of compute capability below
    ``MIN_CAPABILITY``), or None. ROCm devices, also ``cuda`` to torch, are left to Triton."""
    if torch.version.hip is not None:
        return None
    capability = torch.cuda.get_device_capability(device)
    if capability >= MIN_CAPABILITY:
        return None
    least, got = (".".join(map(str, c)) for c in (MIN_CAPABILITY, capability))
    return f"Triton compiles for NVIDIA GPUs of compute capability {least} and newer; this one is {got}"


@functools.cache
def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton steps cannot run on ``device``, or None when they can."""
    if device.type != "cuda":
        return f"the Triton step runs on CUDA tensors, got {device.type}"
    if not torch.cuda.is_available():
        return "the Triton step runs on a CUDA device, and torch sees none here"
    too_old = gpu_too_old_for_triton(device)
    if too_old is not None:
        return f"the Triton step needs a newer GPU: {too_old}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the Triton step needs triton (pip install triton)"
    return None


# What the kernels read as float32 and store back rounded once (spam_opt/kernels/precision_jit.py).
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def steps_in_float32(p: Tensor, g: Tensor) -> bool:
    """Whether a Triton step can take ``p`` and its gradient: contiguous, ``p`` in one of ``FLOAT_DTYPES``
    and ``g`` in float32 or ``p``'s dtype. A float64 parameter would lose precision in a float32 step."""
    return (p.dtype in FLOAT_DTYPES and g.dtype in (torch.float32, p.dtype) and p.is_contiguous()
            and g.is_contiguous())


def programs(numel: int, limit: int | None = None) -> tuple[int]:
    """The launch grid over ``numel`` entries: one program per ``BLOCK``, at most ``limit``."""
    blocks = -(-numel // BLOCK)
    return (blocks if limit is None else min(blocks, limit),)


def with_triton(takes: Callable[[Tensor, Tensor, Any], bool], step: Kernel, fallback: Kernel) -> Kernel:
    """A kernel: the Triton ``step`` on the parameters it ``takes``, ``fallback`` on the others."""

    def triton_step(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                    h: Any) -> KernelResult:
        return with_fallback((takes(p, g, st) for p, g, st in zip(params, grads, states)), step, fallback,
                             params, grads, states, gate, h)

    return triton_step
