"""Drawing sparse momentum's kept entries: the C++ op on CPU, the torch transcription elsewhere.

Two layouts of the same draw: the compact index list of float32 moments, the bitmap of 8-bit ones.

Which entries are kept is specified (and written in torch) in ``spam_opt.sparse``; the C++ op computes the
same hash in one pass, 20-25x faster, which matters at every momentum reset of a 100M+ entry parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spam_opt.kernels.cpp_ops import optimizer_ops_unavailable_reason
from spam_opt.sparse import keep_threshold, kept_indices
from spam_opt.state.kept import KeptEntries, pack_bits


def draw_kept(numel: int, key: int, density: float, *, offset: int = 0,
              device: torch.device | str = "cpu") -> KeptEntries:
    """The kept entries among ``numel`` consecutive entries from flat index ``offset``, in the compact layout.

    Example::

        kept = draw_kept(1 << 20, mask_key(seed=0, param_index=3, reset_number=0), density=0.25)
    """
    if torch.device(device).type == "cpu" and optimizer_ops_unavailable_reason() is None:
        low, starts = torch.ops.spam_opt.kept_entries(numel, key, keep_threshold(density), offset)
        return KeptEntries(low, starts)
    return KeptEntries.from_indices(kept_indices(numel, key, density, offset=offset, device=device), numel)


def draw_kept_bits(numel: int, key: int, density: float, *, offset: int = 0,
                   device: torch.device | str = "cpu") -> Tensor:
    """The same draw as ``draw_kept``, as the bitmap of the 8-bit layout (``spam_opt.state.kept``).

    Example::

        bits = draw_kept_bits(1 << 20, mask_key(seed=0, param_index=3, reset_number=0), density=0.25)
    """
    if torch.device(device).type == "cpu" and optimizer_ops_unavailable_reason() is None:
        return torch.ops.spam_opt.kept_bits(numel, key, keep_threshold(density), offset)
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    mask[kept_indices(numel, key, density, offset=offset, device=device).long()] = True
    return pack_bits(mask)
