"""A parameter's moments in the optimizer state: the keys of each layout, making them, and reading them.

Four layouts, from the group's ``state_bits`` and whether the optimizer keeps momentum for a subset of the
entries only (SPAM's sparse momentum):

=======  =========================================================  =========================================
bits     dense                                                      sparse (values for the kept entries only)
=======  =========================================================  =========================================
32       ``exp_avg``, ``exp_avg_sq``: float32, the parameter's      float32 vectors in kept order;
         shape                                                      ``kept_low``, ``kept_starts``
8        ``exp_avg`` int8 and ``exp_avg_sq`` uint8 codes, one per   codes per kept entry; ``kept_bits``
         entry; ``exp_avg_scale``, ``exp_avg_sq_scale`` per block
=======  =========================================================  =========================================

``spam_opt.state.quantized`` defines the 8-bit codes and blocks, ``spam_opt.state.kept`` the kept-entry
formats. Every other state key (step counts, per-tensor statistics, the reset number) is the optimizer's.

Example::

    state = {}
    new_moments(state, p, eight=False, draw=None)  # float32 zeros shaped like p
    m, v = state["exp_avg"], state["exp_avg_sq"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spam_opt._distributed import flat_span, local_tensor
from spam_opt.kernels.draw import draw_kept, kept_bitmap
from spam_opt.state.kept import BITMAP_KEY, INDEX_KEYS, KeptEntries
from spam_opt.state.quantized import QuantizedMoments

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
SCALE_KEYS = ("exp_avg_scale", "exp_avg_sq_scale")
# Every key that depends on the layout: a reset or a new layout replaces them all.
LAYOUT_KEYS = (*MOMENT_KEYS, *SCALE_KEYS, *INDEX_KEYS, BITMAP_KEY)


@dataclass(frozen=True)
class KeptDraw:
    """Which entries of a parameter keep momentum: the hash's key and the density (``spam_opt.sparse``)."""

    key: int
    density: float


def draw_kept_state(p: Tensor, draw: KeptDraw, bitmap: bool) -> tuple[dict[str, Tensor], int]:
    """The kept entries of this rank's shard of ``p`` as state keys: the bitmap of the 8-bit layout, or the
    index of the float32 one, and how many entries are kept. Refuses a shard that is not a run of whole
    rows."""
    numel, offset = flat_span(p)
    # Drawn on the host (spam_opt.kernels.draw): the count, which sizes the moments, needs no device read.
    kept = draw_kept(numel, draw.key, draw.density, offset=offset, device=local_tensor(p).device)
    if bitmap:
        return {BITMAP_KEY: kept_bitmap(kept, numel)}, kept.numel()
    return dict(zip(INDEX_KEYS, (kept.low, kept.starts))), kept.numel()


def new_moments(state: dict[str, Any], p: Tensor, eight: bool, draw: KeptDraw | None) -> None:
    """Give ``p`` zero moments in its layout, replacing any it had (and their kept entries).

    ``eight``: 8-bit moments (``spam_opt.state.quantized.quantizes``); ``draw``: the kept entries of sparse
    momentum, None for dense moments.
    """
    local = local_tensor(p)
    for key in LAYOUT_KEYS:
        state.pop(key, None)
    if eight:
        flat_span(p)  # the 8-bit blocks need whole rows on every rank, as sparse momentum does
    kept, stored = ({}, None) if draw is None else draw_kept_state(p, draw, bitmap=eight)
    state.update(kept)
    if eight:
        q = QuantizedMoments.zeros(local.numel(), local.shape[-1], state.get(BITMAP_KEY), device=local.device,
                                   stored=stored)
        state.update(zip((*MOMENT_KEYS, *SCALE_KEYS),
                         (q.exp_avg, q.exp_avg_sq, q.exp_avg_scale, q.exp_avg_sq_scale)))
        return
    if draw is None:
        for key in MOMENT_KEYS:
            state[key] = torch.zeros_like(local, dtype=torch.float32, memory_format=torch.preserve_format)
        return
    for key in MOMENT_KEYS:
        state[key] = torch.zeros(stored, dtype=torch.float32, device=local.device)


@dataclass(frozen=True)
class Float32Moments:
    """A parameter's float32 moments as the state holds them: shaped like the parameter, or one value per
    kept entry (``kept``) under sparse momentum."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    kept: KeptEntries | None


def stored_moments(state: dict[str, Any], local: Tensor, eight: bool) -> Float32Moments | QuantizedMoments:
    """The moments that ``new_moments`` (or a loaded state dict) put in ``state``; ``local``: the rank-local
    parameter."""
    if eight:
        return QuantizedMoments(*(state[k] for k in (*MOMENT_KEYS, *SCALE_KEYS)), local.shape[-1],
                                state.get(BITMAP_KEY))
    kept = KeptEntries(*(state[k] for k in INDEX_KEYS)) if INDEX_KEYS[0] in state else None
    return Float32Moments(*(state[k] for k in MOMENT_KEYS), kept)
