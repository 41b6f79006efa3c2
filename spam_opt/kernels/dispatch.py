"""Which kernel a param group steps with: one flag rule and one fallback policy for every optimizer.

As in ``torch.optim.AdamW``, the ``foreach`` and ``fused`` options of a param group pick the path:

=============  ==================  ==================================================================
foreach        fused               kernel
=============  ==================  ==================================================================
False          None or False       the single-tensor reference (the oracle the tests compare against)
True           None or False       the multi-tensor ``foreach`` kernel
None or False  True                the fused kernel of the tensors' device; an error if it cannot run
None           None (the default)  CPU: the fused (C++) kernel, or foreach with a warning when it
                                   cannot be built; any other device: foreach
None           False               foreach
=============  ==================  ==================================================================

The fused kernel of a device: C++ on CPU for both optimizers; on CUDA the ``torch.compile``d steps (every
layout, 8-bit moments included), which, like torch's own new kernels, are not picked by default until they
have been run on a GPU.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spam_opt.kernels.compiled_lists import compiled_unavailable_reason
from spam_opt.kernels.cpp_build import load_optimizer_ops
from spam_opt.kernels.result import Kernel
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.spam.cpp import spam_cpp
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.reference import spam_reference
from spam_opt.kernels.stable_spam.compiled import stable_spam_compiled
from spam_opt.kernels.stable_spam.cpp import stable_spam_cpp
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.stable_spam.reference import stable_spam_reference

# The fused kernel for a device, and why it cannot run there (None: it can).
FusedLookup = Callable[[torch.device], tuple[Kernel | None, str | None]]


@dataclass(frozen=True)
class KernelTable:
    """The kernels of one optimizer, by path."""

    optimizer: str
    reference: Kernel
    foreach: Kernel
    fused: FusedLookup


def _spam_fused(device: torch.device) -> tuple[Kernel | None, str | None]:
    if device.type == "cpu":
        return spam_cpp, load_optimizer_ops()
    if device.type == "cuda":
        return spam_compiled, compiled_unavailable_reason(device)
    return None, f"SPAM's fused step runs on CPU and CUDA tensors, got {device.type}"


def _stable_spam_fused(device: torch.device) -> tuple[Kernel | None, str | None]:
    if device.type == "cpu":
        return stable_spam_cpp, load_optimizer_ops()
    if device.type == "cuda":
        return stable_spam_compiled, compiled_unavailable_reason(device)
    return None, f"StableSPAM's fused step runs on CPU and CUDA tensors, got {device.type}"


SPAM_KERNELS = KernelTable("SPAM", spam_reference, spam_foreach, _spam_fused)
STABLE_SPAM_KERNELS = KernelTable("StableSPAM", stable_spam_reference, stable_spam_foreach,
                                  _stable_spam_fused)


@functools.cache
def warn_fallback(message: str) -> None:
    """Warn once per distinct message that an optimizer runs a slower path than it could."""
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def select_kernel(table: KernelTable, foreach: bool | None, fused: bool | None,
                  device: torch.device) -> Kernel:
    """The kernel the flags name for tensors on ``device`` (see the table in this module's docstring).

    Example::

        kernel = select_kernel(SPAM_KERNELS, foreach=None, fused=None, device=torch.device("cpu"))
    """
    if foreach is False and not fused:
        return table.reference
    automatic = foreach is None and fused is None
    if fused or (automatic and device.type == "cpu"):
        kernel, reason = table.fused(device)
        if reason is None and kernel is not None:
            return kernel
        if fused:
            raise RuntimeError(f"fused=True cannot run: {reason}; use fused=None (automatic) or foreach=True")
        warn_fallback(f"{table.optimizer} falls back to the slower foreach step: {reason}")
    return table.foreach
