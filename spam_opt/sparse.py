"""Deterministic choice of the entries that keep momentum under sparse momentum (``density < 1``).

Whether an entry is kept is a pure function of (seed, parameter index, reset number, the entry's index in
the full tensor): a counter-based hash, not a random generator. So every data-parallel rank draws the same
subset without communicating, a resumed run draws what the uninterrupted run drew, and an FSDP shard keeps
exactly the entries of the full tensor that fall inside it, whatever the sharding. How the optimizer state
holds the answer is ``spam_opt.state.kept``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
# Multipliers below 2**31, so that (32-bit value) * multiplier stays inside int64 without overflow.
_M1 = 0x7FEB352D
_M2 = 0x1B873593


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit avalanche mix on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x &= _MASK32
    x ^= x >> 16
    x = (x * _M1) & _MASK32
    x ^= x >> 15
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def mask_key(seed: int, param_index: int, reset_number: int) -> int:
    """The 32-bit key of one parameter's draw at one reset."""
    key = _mix32_int(seed ^ 0x5BD1E995)
    key = _mix32_int(key ^ param_index)
    return _mix32_int(key ^ (reset_number & _MASK32) ^ ((reset_number >> 32) * 0x9E3779B1))


def keep_threshold(density: float) -> int:
    """Entries whose hash is below this are kept: P(kept) = density up to 2**-32."""
    return min(int(round(density * 2**32)), 2**32)


def kept_indices(numel: int, key: int, density: float, *, offset: int = 0,
                 device: torch.device | str = "cpu", chunk: int = 1 << 22) -> Tensor:
    """Flat indices (relative to ``offset``) of the kept entries among ``numel`` consecutive entries.

    ``offset`` is the flat index of the first entry in the full tensor, so a shard of a larger tensor keeps
    what the full tensor keeps there. Indices come back sorted, int32 when they fit (the index list is part
    of the optimizer state, so its width counts), else int64. Work is chunked to bound temporary memory.

    Example::

        idx = kept_indices(1024, mask_key(seed=0, param_index=3, reset_number=0), density=0.25)
    """
    threshold = keep_threshold(density)
    parts = []
    for start in range(0, numel, chunk):
        stop = offset + min(numel, start + chunk)
        flat = torch.arange(offset + start, stop, device=device, dtype=torch.int64)
        h = _mix32((flat & _MASK32) ^ key)
        h = _mix32(h ^ (flat >> 32))
        parts.append(torch.nonzero(h < threshold).squeeze(1) + start)
    out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)
    return out.to(torch.int32) if numel < 2**31 else out
