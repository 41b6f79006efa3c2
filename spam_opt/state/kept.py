"""The two formats of sparse momentum's kept entries, and the one way to read either back as flat indices.

Which entries are kept is a hash (``spam_opt.sparse``); these are how the optimizer state holds the answer:

- float32 moments: ``kept_low`` (int16, the low 16 bits of each kept flat index, ascending) and
  ``kept_starts`` (int64, the number of kept entries before each block of 2**16 entries, plus one):
  ``KeptEntries``, 2 bytes per kept entry.
- 8-bit moments: ``kept_bits``, a bitmap of int32 words (bit ``j % 32`` of word ``j // 32`` set when local
  entry ``j`` is kept, plus one word of padding), 1 bit per entry whatever the density.

Example::

    kept = KeptEntries.from_indices(torch.tensor([3, 70_000]), numel=100_000)
    assert torch.equal(kept_flat_indices({"kept_low": kept.low, "kept_starts": kept.starts}, 100_000),
                       torch.tensor([3, 70_000]))
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

# Flat indices are stored per block of this many entries: the low 16 bits of each index, plus the number of
# kept entries before each block. Two bytes per kept entry instead of four keeps sparse state under 0.35x
# of AdamW's at density 0.25 (m and v take 0.25x; int32 indices would add 0.125x).
BLOCK_BITS = 16

# The state keys of each format.
INDEX_KEYS = ("kept_low", "kept_starts")
BITMAP_KEY = "kept_bits"


@dataclass(frozen=True)
class KeptEntries:
    """The kept entries of one parameter (or shard), in the compact layout that float32 state holds.

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


# What the kernels derive from a draw (its bitmap, the kept entries before each span or 8-bit block), by (id
# of the draw's tensor: ``low`` or the bitmap, kind).
_derived: dict[tuple[int, str], tuple[weakref.ref[Tensor], int, Tensor]] = {}

Draw = TypeVar("Draw", KeptEntries, Tensor)


def per_draw(kept: Draw, kind: str, build: Callable[[Draw], Tensor]) -> Tensor:
    """``build(kept)``, built once per draw and kept beside the state: the kept entries change only when
    momentum is reset, so a kernel that needs them in another form (a bitmap, counts per span) should not
    rebuild it at every step. ``kept``: float32 state's ``KeptEntries`` or 8-bit state's bitmap. Rebuilt
    when the state's index tensor (``low``, or the bitmap) is replaced (a new draw, a loaded state dict) or
    written in place; dropped with it."""
    low = kept.low if isinstance(kept, KeptEntries) else kept
    key = (id(low), kind)
    cached = _derived.get(key)
    if cached is not None and cached[0]() is low and cached[1] == low._version:
        return cached[2]
    value = build(kept)
    _derived[key] = (weakref.ref(low, lambda _, key=key: _derived.pop(key, None)), low._version, value)
    return value


# A bitmap's words are built and read as bytes: a word is 4 bytes, least significant first (torch's tensors
# are little-endian on the devices it runs on), so entry j is bit j % 8 of byte j // 8 too. Bytes keep the
# intermediate tensors at 1 byte per entry where int64 ones took 8, which on a GPU is a transient of 8 bytes
# per parameter at every momentum reset.


def _bit_shifts(device: torch.device) -> Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool vector as int32 words (bit j % 32 of word j // 32), plus one word of padding."""
    words = -(-mask.numel() // 32) + 1
    padded = torch.zeros(words * 32, dtype=torch.uint8, device=mask.device)
    padded[:mask.numel()] = mask
    packed = (padded.view(-1, 8) << _bit_shifts(mask.device)).sum(1, dtype=torch.uint8)  # distinct bits
    return packed.view(torch.int32)


def unpack_bits(words: Tensor, numel: int) -> Tensor:
    """The bool vector of ``numel`` entries that ``pack_bits`` packed into ``words``."""
    bits = (words.contiguous().view(torch.uint8).unsqueeze(1) >> _bit_shifts(words.device)).bitwise_and_(1)
    return bits.view(torch.bool).reshape(-1)[:numel]


def kept_per_span(kept: Tensor, span: int) -> Tensor:
    """The count of true entries of the bool vectors ``kept`` (..., n) in each span of ``span`` consecutive
    entries of their last dimension (int64; the last span of each vector may be short)."""
    short = -kept.shape[-1] % span
    entries = kept.view(torch.uint8)
    if short:
        entries = torch.nn.functional.pad(entries, (0, short))
    # Counted in runs of at most 128 entries first, in uint8 (a run's count fits): a sum straight to int64
    # would first cast every entry to 8 bytes.
    run = math.gcd(span, 128)
    runs = entries.reshape(-1, run).sum(-1, dtype=torch.uint8)
    return runs.view(*kept.shape[:-1], -1, span // run).sum(-1, dtype=torch.int64)


def kept_before(words: Tensor, numel: int, span: int) -> Tensor:
    """The entries a bitmap of ``numel`` entries keeps before each span of ``span`` consecutive entries
    (int64, one per span): where a span's kept entries start in state stored in ascending flat order."""
    per_span = kept_per_span(unpack_bits(words, numel), span)
    return per_span.cumsum(0) - per_span


def count_bits(words: Tensor) -> int:
    """How many entries a bitmap keeps."""
    return int(kept_per_span(unpack_bits(words, words.numel() * 32), 128).sum())


def bitmap_indices(words: Tensor, numel: int, count: int | None = None) -> Tensor:
    """The flat indices (int64, ascending) that a bitmap of ``numel`` entries keeps. ``count``: how many it
    keeps, when known on the host (then no device read sizes the output: ``nonzero`` reads it back)."""
    mask = unpack_bits(words, numel)
    return (mask.nonzero() if count is None else torch.nonzero_static(mask, size=count)).squeeze(1)


def kept_flat_indices(state: Mapping[str, Any], numel: int) -> Tensor | None:
    """The flat (rank-local) indices of the kept entries of a parameter's state, in either format (int64,
    ascending); None for a dense parameter. ``numel``: the entries of the (rank-local) parameter."""
    if BITMAP_KEY in state:
        return bitmap_indices(state[BITMAP_KEY], numel)
    if INDEX_KEYS[0] in state:
        return KeptEntries(*(state[k] for k in INDEX_KEYS)).indices()
    return None
