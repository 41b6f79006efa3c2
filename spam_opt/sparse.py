"""Deterministic choice of the entries that keep momentum under sparse momentum (``density < 1``).

Whether an entry is kept is a pure function of (seed, parameter index, reset number, the entry's index in
the full tensor): a counter-based hash, not a random generator. So every data-parallel rank draws the same
subset without communicating, a resumed run draws what the uninterrupted run drew, and an FSDP shard keeps
exactly the entries of the full tensor that fall inside it, whatever the sharding.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# Flat indices are stored per block of this many entries: the low 16 bits of each index, plus the number of
# kept entries before each block. Two bytes per kept entry instead of four keeps sparse state under 0.35x
# of AdamW's at density 0.25 (m and v take 0.25x; int32 indices would add 0.125x).
BLOCK_BITS = 16


@dataclass(frozen=True)
class KeptEntries:
    """The kept entries of one parameter (or shard), in the compact layout that the optimizer state holds.

    ``low`` (int16, one per kept entry, ascending) holds each flat index modulo 2**16; ``starts`` (int64,
    one per 2**16-entry block plus one) the number of kept entries before each block.

    Example::

        kept = KeptEntries.from_indices(kept_indices(200_000, key, 0.25), 200_000)
        assert torch.equal(kept.indices(), kept_indices(200_000, key, 0.25).long())
    """

    low: Tensor
    starts: Tensor

    @classmethod
    def from_indices(cls, indices: Tensor, numel: int) -> KeptEntries:
        indices = indices.long()
        blocks = (numel >> BLOCK_BITS) + 1
        # index_add rather than bincount, which reads the largest index on the host (a device sync).
        counts = indices.new_zeros(blocks).index_add_(0, indices >> BLOCK_BITS, torch.ones_like(indices))
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        # int16 wraps values of 2**15 and above to negative ones; indices() masks them back.
        low = (indices & ((1 << BLOCK_BITS) - 1)).to(torch.int16)
        return cls(low, starts)

    def indices(self) -> Tensor:
        """The kept flat indices (int64, ascending)."""
        counts = self.starts.diff()
        # output_size: without it repeat_interleave reads the total back from the device (a sync per step).
        block = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts,
                                        output_size=self.low.numel())
        return (block << BLOCK_BITS) + (self.low.long() & ((1 << BLOCK_BITS) - 1))

    def numel(self) -> int:
        return self.low.numel()
