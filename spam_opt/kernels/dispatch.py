"""Which kernel a param group steps with: one registry of kernels per optimizer and device, one flag rule.

Per device type an optimizer lists its candidate kernels in order of preference, each able to say why it
cannot run here (no compiler, no triton, a device it does not serve); the single-tensor reference closes
every list, always available. A new kernel is one ``Candidate`` in its optimizer's table:

==========  ==================================================================================
device      candidates, in order (then the reference)
==========  ==================================================================================
CPU         the C++ step (``fused``), foreach
CUDA        the Triton step (``fused``; not a default: see below), foreach
other       foreach
==========  ==================================================================================

As in ``torch.optim.AdamW``, the ``foreach`` and ``fused`` options of a param group pick among them:

=============  ==================  ==================================================================
foreach        fused               kernel
=============  ==================  ==================================================================
False          None or False       the single-tensor reference (the oracle the tests compare against)
True           None or False       the multi-tensor ``foreach`` kernel
None or False  True                the device's fused kernel; an error saying why when it cannot run
None           None (the default)  the first default candidate that can run (CPU: C++, or foreach with
                                   a warning saying why C++ cannot run; CUDA and others: foreach)
None           False               foreach
=============  ==================  ==================================================================

The fused kernel of a device: C++ on CPU for both optimizers. On CUDA, Triton kernels for float32, bfloat16
and float16 parameters with every moment layout (one launch per parameter for SPAM, three for Stable-SPAM),
and the ``torch.compile``d steps for float64 ones. Neither is picked by default: on an H200 the compiled
steps passed their tests but their first step compiled for 30 s to over 2 minutes, with their steady speed
unmeasured (benchmarks/results/gpu_run.md), and the Triton kernels have run only in Triton's interpreter and
compiled for Hopper without a GPU (tests/test_triton_steps.py).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from spam_opt.kernels.cpp_ops import optimizer_ops_unavailable_reason
from spam_opt.kernels.result import Kernel
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.spam.cpp import spam_cpp
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.reference import spam_reference
from spam_opt.kernels.spam.triton_kernel import spam_triton_with
from spam_opt.kernels.stable_spam.compiled import stable_spam_compiled
from spam_opt.kernels.stable_spam.cpp import stable_spam_cpp
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.stable_spam.reference import stable_spam_reference
from spam_opt.kernels.stable_spam.triton_kernel import stable_spam_triton_with
from spam_opt.kernels.triton_steps import triton_unavailable_reason


def always_available(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Candidate:
    """One kernel that may step a param group: its name (in warnings and errors), why it cannot run on a
    device (None: it can), whether it is the device's fused kernel (what ``fused=True`` asks for), and
    whether the automatic choice may pick it (False until it has run on that device)."""

    name: str
    kernel: Kernel
    unavailable_reason: Callable[[torch.device], str | None] = always_available
    fused: bool = False
    default: bool = True


@dataclass(frozen=True)
class KernelTable:
    """The kernels of one optimizer: candidates per device type (``other``: any device type not listed), in
    order of preference, and the reference that closes every list.

    Example::

        foreach = Candidate("foreach", my_foreach)
        table = KernelTable("MyRule", {"cpu": (Candidate("C++", my_cpp, my_cpp_reason, fused=True), foreach)},
                            other=(foreach,), reference=my_reference)
    """

    optimizer: str
    devices: Mapping[str, tuple[Candidate, ...]]
    other: tuple[Candidate, ...]
    reference: Kernel

    def candidates(self, device: torch.device) -> tuple[Candidate, ...]:
        return self.devices.get(device.type, self.other)


def _cpp_unavailable_reason(device: torch.device) -> str | None:
    return optimizer_ops_unavailable_reason()


_SPAM_FOREACH = Candidate("foreach", spam_foreach)
SPAM_KERNELS = KernelTable(
    "SPAM",
    {"cpu": (Candidate("C++", spam_cpp, _cpp_unavailable_reason, fused=True), _SPAM_FOREACH),
     "cuda": (Candidate("Triton", spam_triton_with(spam_compiled), triton_unavailable_reason, fused=True,
                        default=False), _SPAM_FOREACH)},
    other=(_SPAM_FOREACH,), reference=spam_reference,
)
_STABLE_SPAM_FOREACH = Candidate("foreach", stable_spam_foreach)
STABLE_SPAM_KERNELS = KernelTable(
    "StableSPAM",
    {"cpu": (Candidate("C++", stable_spam_cpp, _cpp_unavailable_reason, fused=True), _STABLE_SPAM_FOREACH),
     "cuda": (Candidate("Triton", stable_spam_triton_with(stable_spam_compiled), triton_unavailable_reason,
                        fused=True, default=False), _STABLE_SPAM_FOREACH)},
    other=(_STABLE_SPAM_FOREACH,), reference=stable_spam_reference,
)


@functools.cache
def warn_fallback(message: str) -> None:
    """Warn once per distinct message that an optimizer runs a slower path than it could."""
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def _fused(table: KernelTable, device: torch.device) -> Kernel:
    fused = [c for c in table.candidates(device) if c.fused]
    reasons = []
    for candidate in fused:
        reason = candidate.unavailable_reason(device)
        if reason is None:
            return candidate.kernel
        reasons.append(reason)
    if not reasons:
        served = sorted(t for t, cs in table.devices.items() if any(c.fused for c in cs))
        reasons.append(f"{table.optimizer}'s fused step runs on {' and '.join(served)} tensors, got "
                       f"{device.type}")
    raise RuntimeError(f"fused=True cannot run: {'; '.join(reasons)}; use fused=None (automatic) or "
                       "foreach=True")


def select_kernel(table: KernelTable, foreach: bool | None, fused: bool | None,
                  device: torch.device) -> Kernel:
    """The kernel the flags name for tensors on ``device`` (see the tables in this module's docstring).

    Example::

        kernel = select_kernel(SPAM_KERNELS, foreach=None, fused=None, device=torch.device("cpu"))
    """
    if foreach is False and not fused:
        return table.reference
    if fused:
        return _fused(table, device)
    automatic = foreach is None and fused is None
    skipped = None
    for candidate in table.candidates(device):
        if candidate.fused and not (automatic and candidate.default):
            continue
        reason = candidate.unavailable_reason(device)
        if reason is None:
            if skipped is not None:
                warn_fallback(f"{table.optimizer} falls back to the slower {candidate.name} step: {skipped}")
            return candidate.kernel
        skipped = skipped or reason
    why = skipped or f"no other {table.optimizer} kernel serves {device.type} tensors"
    warn_fallback(f"{table.optimizer} falls back to the single-tensor reference step: {why}")
    return table.reference
