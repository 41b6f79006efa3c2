"""Optimizers by name, and the optional spike guard around them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainers.config import TrainConfig


def _fused_available(model: nn.Module) -> bool:
    device = next(model.parameters()).device.type
    return device in ("cpu", "cuda")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> Optimizer:
    """The optimizer named by ``cfg.optimizer``, with ``cfg.optimizer_kwargs`` passed through.

    Example::

        opt = build_optimizer(TrainConfig(optimizer="spam", density=0.25), model)
    """
    common: dict[str, Any] = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.optimizer_kwargs)
    betas = (cfg.beta1, cfg.beta2)
    try:
        if cfg.optimizer == "spam":
            from spam_opt.param_groups import param_groups
            from spam_opt.spam import SPAM

            params = param_groups(model, density=cfg.density) if cfg.density < 1 else model.parameters()
            return SPAM(params, betas=betas, seed=cfg.seed, **common)
        if cfg.optimizer == "stable-spam":
            from spam_opt.stable_spam import StableSPAM

            return StableSPAM(model.parameters(), betas=betas, **common)
        if cfg.optimizer == "adamw":
            fused = common.pop("fused", _fused_available(model))
            return torch.optim.AdamW(model.parameters(), betas=betas, fused=fused, **common)
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("optimizer 'adamw8bit' needs bitsandbytes: "
                                  "pip install spam-opt[bnb]") from err
            return bnb.optim.AdamW8bit(model.parameters(), betas=betas, **common)
        if cfg.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            # Adafactor's own schedule is off: the trainer's cosine schedule drives lr.
            common = dict(scale_parameter=False, relative_step=False, warmup_init=False) | common
            return Adafactor(model.parameters(), **common)
    except TypeError as err:  # an optimizer_kwargs key the optimizer does not take
        raise ValueError(f"optimizer {cfg.optimizer!r} rejected its options {common}: {err}") from err
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_spike_guard(cfg: TrainConfig, optimizer: Optimizer) -> Any:
    """``spam_opt.spike_guard.SpikeGuard`` on ``optimizer``; ``guard.step(loss=...)`` replaces its step."""
    from spam_opt.spike_guard import SpikeGuard

    return SpikeGuard(optimizer, sigma=cfg.guard_sigma, window=cfg.guard_window,
                      min_history=cfg.guard_min_history, action=cfg.guard_action)


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (moments, masks, quantization scales...) in this process.

    Under ``--fsdp`` that is this process's shards: AdamW's state is DTensors, whose ``numel`` is global.
    """
    from spam_opt._distributed import local_tensor

    return sum(local_tensor(t).numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))
