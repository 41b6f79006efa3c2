"""How each optimizer state key is stored in a resharding checkpoint (``spam_opt.checkpoint``).

``STATE_LAYOUT`` gives every key one rule; a new state key joins by adding a line here (an unknown key is an
error at save time, naming this table).
"""

from __future__ import annotations

from enum import Enum


class Layout(Enum):
    """How one state key is stored in a checkpoint."""

    ENTRY = "entry"  # one value per entry (per kept entry under sparse momentum, in kept order): full shape
    BLOCK = "block"  # one value per block of a row (8-bit scales): as rows of dim 0, sharded by rows
    SCALAR = "scalar"  # the same on every rank: as is
    KEPT = "kept"  # the kept entries: not saved (a marker says they existed), drawn again at load


STATE_LAYOUT: dict[str, Layout] = {
    "exp_avg": Layout.ENTRY,  # float32 moments, or 8-bit codes under state_bits=8
    "exp_avg_sq": Layout.ENTRY,
    "exp_avg_scale": Layout.BLOCK,
    "exp_avg_sq_scale": Layout.BLOCK,
    "step": Layout.SCALAR,
    "reset_number": Layout.SCALAR,
    "max_ema": Layout.SCALAR,  # StableSPAM's per-tensor statistics (of the full tensor on every rank)
    "norm_ema": Layout.SCALAR,
    "norm_sq_ema": Layout.SCALAR,
    "kept_low": Layout.KEPT,
    "kept_starts": Layout.KEPT,
    "kept_bits": Layout.KEPT,  # the 8-bit layout's bitmap of the kept entries
}


def layout_of(key: str) -> Layout:
    """The rule of a state key; a ValueError naming the table for a key it lacks."""
    if key not in STATE_LAYOUT:
        raise ValueError(f"optimizer state key {key!r} has no checkpoint layout: add it to "
                         "spam_opt.state.checkpoint_layout.STATE_LAYOUT (ENTRY, BLOCK, SCALAR or KEPT)")
    return STATE_LAYOUT[key]
