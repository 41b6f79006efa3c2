"""Drawing sparse momentum's kept entries, on the host, whatever the parameters' device.

Two layouts of the same draw: the compact index list of float32 moments, the bitmap of 8-bit ones.

Which entries are kept is specified (and written in torch) in ``spam_opt.sparse``: a pure function of (seed,
parameter index, reset number, flat index). How many are kept is a value the moments' size depends on, so
wherever it is computed it must reach the host before they can be allocated. Computed on the device, that is a
device-to-host read at every momentum reset, which stalls the GPU's queue. So the draw runs on the host (the
C++ op, 20-25x faster than the torch transcription, which stands in when the op could not be built), from
the hash alone, and its result is copied to the device without waiting (from pinned memory, non-blocking):
the count is then the host-side length of the index list, and the draw is identical on every device (a run
resumed on another device keeps the same entries). The price is one pass of the hash over the (rank-local)
parameter on the host per reset, amortised over the reset interval (500 steps by default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spam_opt.kernels.cpp_ops import optimizer_ops_unavailable_reason
from spam_opt.sparse import keep_threshold, kept_indices
from spam_opt.state.kept import KeptEntries, pack_bits


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device``, copied without making the host wait for the device's queue."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()  # a copy from pageable memory would be synchronous
    return t.to(device, non_blocking=True)


def draw_kept(numel: int, key: int, density: float, *, offset: int = 0,
              device: torch.device | str = "cpu") -> KeptEntries:
    """The kept entries among ``numel`` consecutive entries from flat index ``offset``, in the compact layout,
    drawn on the host and placed on ``device``: ``numel()`` is known without reading the device.

    Example::

        kept = draw_kept(1 << 20, mask_key(seed=0, param_index=3, reset_number=0), density=0.25)
    """
    if optimizer_ops_unavailable_reason() is None:
        low, starts = torch.ops.spam_opt.kept_entries(numel, key, keep_threshold(density), offset)
    else:
        kept = KeptEntries.from_indices(kept_indices(numel, key, density, offset=offset), numel)
        low, starts = kept.low, kept.starts
    device = torch.device(device)
    return KeptEntries(_to_device(low, device), _to_device(starts, device))


def kept_bitmap(kept: KeptEntries, numel: int) -> Tensor:
    """The bitmap of the 8-bit layout (``spam_opt.state.kept``) of the entries ``kept`` holds, built on
    their device without a host read."""
    if kept.low.device.type == "cpu" and optimizer_ops_unavailable_reason() is None:
        return torch.ops.spam_opt.kept_bits_of(kept.low, kept.starts, numel)
    mask = torch.zeros(numel, dtype=torch.bool, device=kept.low.device)
    return pack_bits(mask.index_fill_(0, kept.indices(), True))


def draw_kept_bits(numel: int, key: int, density: float, *, offset: int = 0,
                   device: torch.device | str = "cpu") -> Tensor:
    """The same draw as ``draw_kept``, as the bitmap of the 8-bit layout (``spam_opt.state.kept``).

    Example::

        bits = draw_kept_bits(1 << 20, mask_key(seed=0, param_index=3, reset_number=0), density=0.25)
    """
    if torch.device(device).type == "cpu" and optimizer_ops_unavailable_reason() is None:
        return torch.ops.spam_opt.kept_bits(numel, key, keep_threshold(density), offset)
    return kept_bitmap(draw_kept(numel, key, density, offset=offset, device=device), numel)
