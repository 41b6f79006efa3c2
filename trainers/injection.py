"""What a stress test does to a run on purpose, set up from the config: gradient spikes, degenerate batches.

Gradient spikes (``inject_spike_steps``) multiply gradients after backward: whole tensors, or with
``inject_fraction`` < 1 a random fraction of their entries. Bad batches (``bad_batch_steps``) replace the
training batch before the forward pass, so the spike comes from the data through the model as in real runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainers.config import TrainConfig

# random: uniform random tokens, like a binary blob or an encoding error in a text corpus;
# repeat: each sequence is its first token repeated, like a run of padding or a degenerate page;
# shuffle: the batch's own tokens in random order, text with its structure destroyed.
BAD_BATCH_KINDS = ("random", "repeat", "shuffle")


def build_injector(cfg: TrainConfig, model: nn.Module) -> Any:
    """A ``SpikeInjector`` when ``inject_spike_steps`` is set, else None."""
    if not cfg.inject_spike_steps:
        return None
    from spam_opt.monitor import SpikeInjector

    return SpikeInjector(model, cfg.inject_spike_steps, factor=cfg.inject_factor,
                         param_pattern=cfg.inject_pattern, fraction=cfg.inject_fraction, seed=cfg.seed)


def degenerate_batch(batch: Tensor, kind: str, vocab_size: int, seed: int, step: int) -> Tensor:
    """A batch of the same shape made degenerate as ``kind`` says (see ``BAD_BATCH_KINDS``).

    Deterministic in (seed, step), so a resumed run sees the same bad batch as the uninterrupted one.

    Example::

        batch = degenerate_batch(batch, "random", vocab_size=257, seed=0, step=120)
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    cpu = batch.cpu()
    if kind == "random":
        out = torch.randint(0, vocab_size, cpu.shape, generator=gen, dtype=cpu.dtype)
    elif kind == "repeat":
        out = cpu[:, :1].expand_as(cpu).clone()
    elif kind == "shuffle":
        flat = cpu.reshape(-1)
        out = flat[torch.randperm(flat.numel(), generator=gen)].view_as(cpu)
    else:
        raise ValueError(f"invalid bad_batch={kind!r}: accepted values are {', '.join(BAD_BATCH_KINDS)}")
    return out.to(batch.device)
