"""The 8-bit optimizer state (``state_bits=8``): its blocks, its two maps, and its layout, in one place.

Which parameters: ``state_bits=8`` stores the moments of every parameter of 2 or more dimensions (block
matrices, embeddings, the output head) in 8 bits; 0-dim and 1-D parameters (norms, biases, scalars) keep
float32 moments. A 1-D tensor has a single row, which FSDP2 splits anywhere, so it could not keep the block
rule below; and it holds a negligible share of a model's entries.

Blocks: each row of the last dimension (``row_length`` entries) is cut into blocks of ``BLOCK`` consecutive
entries, the last block of a row holding the rest. Block ``b`` of entry ``i`` (flat, row-major) is::

    per_row = ceil(row_length / BLOCK)
    b = (i // row_length) * per_row + (i % row_length) // BLOCK

A block never crosses a row, and FSDP2 shards parameters along dim 0 (whole rows), so every rank holds whole
blocks, exactly the blocks a single process holds for those rows.

Maps (per block, float32): the second moment is stored as s = sqrt(v), the first as r = m / (s + eps), the
update direction of the step that wrote it. Each has one scale per block, its largest magnitude; r has a
linear code, s a code linear in sqrt(s) (a 4th root of v)::

    r_scale = max |r|          code_r = round(r · 127 / r_scale)                  in -127..127
    s_scale = max s            code_s = round(sqrt(s · 255² / s_scale))           in 0..255, >= 1 where s > 0
    r̂ = code_r · (r_scale / 127)          ŝ = code_s · code_s · (s_scale / 255²)
    m̂ = r̂ · (ŝ + eps)                     v̂ = ŝ · ŝ

(round: to nearest, ties to even; a block whose scale is 0 stores code 0).

Why these maps (``benchmarks/state_quantization.py`` measured them against the dynamic maps of bitsandbytes
and torchao, other maps and other block sizes; docs/spam.md): r is what the update uses, so its error is an
absolute error of at most half a code step of the block's largest update, whatever the spread of magnitudes
in the block; the square-root code of s keeps small second moments (about 1/65000 of the block's largest) at
a few percent; an error of ŝ changes m̂ and v̂ together and so partly cancels from the next update; a second
moment never rounds to 0 unless it is 0 (a 0 would make the next update m / eps); and the maps cost a
multiply, a sqrt and a round, the update's own sqrt and division giving s and r.

Layout (state keys, per parameter):

- ``exp_avg``: int8 codes of r, ``exp_avg_sq``: uint8 codes of s, one per stored entry.
- ``exp_avg_scale``, ``exp_avg_sq_scale``: float32, one per block of the (rank-local) parameter.
- Sparse momentum (density < 1): ``kept_bits``, the bitmap of ``spam_opt.state.kept``. Codes are stored for
  the kept entries only, in ascending flat index, so the kept entries of a block are contiguous. Every block
  has its scales, kept entries or not.

Bytes per parameter: 2 + 8 / min(BLOCK, row_length) dense; at density d, 2·d + 1/8 + 8 / min(BLOCK,
row_length) (the bitmap is 1 bit per entry whatever d). AdamW keeps 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spam_opt.state.kept import bitmap_indices, count_bits, kept_per_span, unpack_bits

STATE_BITS = (8, 32)
BLOCK = 256
_R_LEVELS = 127.0
_S_LEVELS = 255.0 * 255.0  # codes of s are linear in sqrt(s)


def quantizes(p: Tensor, state_bits: int) -> bool:
    """Whether the moments of ``p`` are stored in 8 bits under ``state_bits``."""
    return state_bits == 8 and p.dim() >= 2


def blocks_per_row(row_length: int) -> int:
    return -(-row_length // BLOCK)


def block_count(numel: int, row_length: int) -> int:
    """Blocks of a (rank-local) parameter of ``numel`` entries whose rows hold ``row_length`` entries."""
    return 0 if numel == 0 else numel // row_length * blocks_per_row(row_length)


def block_ids(flat_index: Tensor, row_length: int) -> Tensor:
    """The block of each (rank-local) flat index (int64)."""
    flat_index = flat_index.long()
    return flat_index // row_length * blocks_per_row(row_length) + flat_index % row_length // BLOCK


def block_starts(kept_bits: Tensor, numel: int, row_length: int) -> Tensor:
    """Under sparse momentum, where each block's codes start: the kept entries (of ``kept_bits``) before
    the block's first entry, one per block (int64)."""
    per_block = kept_per_span(unpack_bits(kept_bits, numel).view(-1, row_length), BLOCK).reshape(-1)
    return per_block.cumsum(0) - per_block


@dataclass
class QuantizedMoments:
    """One parameter's 8-bit moments: codes per stored entry, scales per block, kept entries if sparse.

    Example::

        q = QuantizedMoments.zeros(numel=4096, row_length=64, kept_bits=None)
        m, v = q.dequantize(None, eps=1e-6)  # dense: blocks come from the rows
    """

    exp_avg: Tensor  # int8 codes of r = m / (sqrt(v) + eps)
    exp_avg_sq: Tensor  # uint8 codes of s = sqrt(v)
    exp_avg_scale: Tensor  # float32 per block: max |r|
    exp_avg_sq_scale: Tensor  # float32 per block: max s
    row_length: int
    kept_bits: Tensor | None  # sparse momentum: which local entries are kept (``spam_opt.state.kept``)

    @classmethod
    def zeros(cls, numel: int, row_length: int, kept_bits: Tensor | None,
              device: torch.device | str = "cpu", stored: int | None = None) -> QuantizedMoments:
        """``stored``: how many entries ``kept_bits`` keeps, when the caller knows it (counting them reads
        the bitmap on the host: a device sync)."""
        if stored is None:
            stored = numel if kept_bits is None else int(count_bits(kept_bits))
        blocks = block_count(numel, row_length)
        return cls(torch.zeros(stored, dtype=torch.int8, device=device),
                   torch.zeros(stored, dtype=torch.uint8, device=device),
                   torch.zeros(blocks, dtype=torch.float32, device=device),
                   torch.zeros(blocks, dtype=torch.float32, device=device), row_length, kept_bits)

    def stored_indices(self, numel: int) -> Tensor | None:
        """The flat (rank-local) indices of the stored entries, ascending; None when every entry is stored."""
        # The count is the codes' length: sized by it, the indices need no device read.
        return None if self.kept_bits is None else bitmap_indices(self.kept_bits, numel, self.exp_avg.numel())

    def dequantize(self, blocks: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
        """(m̂, v̂) in float32, one per stored entry. ``blocks``: the block of each stored entry under sparse
        momentum (``block_ids`` of ``stored_indices``); None for a dense parameter, whose rows give them."""
        r_step = self._per_entry(self.exp_avg_scale / _R_LEVELS, blocks)
        s_step = self._per_entry(self.exp_avg_sq_scale / _S_LEVELS, blocks)
        code_s = self.exp_avg_sq.float()
        s = code_s * code_s * s_step
        return self.exp_avg.float() * r_step * (s + eps), s * s

    def quantize_(self, m: Tensor, v: Tensor, blocks: Tensor | None, eps: float,
                  gate: Tensor | None = None) -> None:
        """Store float32 moments ``m``, ``v`` (one per stored entry; ``blocks``: as in ``dequantize``), or
        leave everything as is where ``gate`` (a 0-dim bool tensor) is False."""
        s = v.sqrt()
        r = m / (s + eps)
        r_scale, s_scale = self._block_max(r.abs(), blocks), self._block_max(s, blocks)
        r_inv = self._per_entry(_inverse(r_scale, _R_LEVELS), blocks)
        s_inv = self._per_entry(_inverse(s_scale, _S_LEVELS), blocks)
        code_r = torch.round(r * r_inv).clamp_(-127, 127)
        code_s = torch.round((s * s_inv).sqrt()).clamp_(0, 255)
        code_s = torch.where(s > 0, code_s.clamp(min=1), code_s)
        for target, new in ((self.exp_avg, code_r.to(torch.int8)), (self.exp_avg_sq, code_s.to(torch.uint8)),
                            (self.exp_avg_scale, r_scale), (self.exp_avg_sq_scale, s_scale)):
            target.copy_(new if gate is None else torch.where(gate, new, target))

    def _per_entry(self, per_block: Tensor, blocks: Tensor | None) -> Tensor:
        """A per-block value at each stored entry."""
        if blocks is not None:
            return per_block.index_select(0, blocks)
        rows, per_row = self.exp_avg.numel() // max(self.row_length, 1), blocks_per_row(self.row_length)
        spread = per_block.view(rows, per_row, 1).expand(rows, per_row, BLOCK).reshape(rows, per_row * BLOCK)
        return spread[:, :self.row_length].reshape(-1)

    def _block_max(self, x: Tensor, blocks: Tensor | None) -> Tensor:
        """The largest value of ``x`` (>= 0, one per stored entry) per block; 0 for a block without one."""
        count = self.exp_avg_scale.numel()
        out = torch.zeros(count, dtype=torch.float32, device=x.device)
        if blocks is not None:
            return out.scatter_reduce_(0, blocks, x, "amax")
        if count == 0:
            return out
        padding = blocks_per_row(self.row_length) * BLOCK - self.row_length
        return torch.nn.functional.pad(x.view(-1, self.row_length), (0, padding)).view(count, BLOCK).amax(1)


def _inverse(scale: Tensor, levels: float) -> Tensor:
    """levels / scale, and 0 for an all-zero block (its codes are then 0)."""
    return torch.where(scale > 0, levels / scale, torch.zeros_like(scale))
