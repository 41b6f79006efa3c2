"""Optimizers by name, and the optional spike guard around them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

if TYPE_CHECKING:
    from trainers.config import TrainConfig

# Memory-saving optimizers of other projects through their official packages (the ``memory`` extra):
# name -> (module, pip package).
MEMORY_PEERS = {"galore": ("galore_torch", "galore-torch"), "adam-mini": ("adam_mini", "adam-mini"),
                "torchao-adamw8bit": ("torchao.optim", "torchao")}
# The names build_optimizer takes; the config's choices are these.
OPTIMIZERS = ("spam", "stable-spam", "adamw", "muon", "adamw8bit", "adafactor", *MEMORY_PEERS)
# Those whose state follows the parameters' sharding under FSDP2 (--fsdp).
SHARDABLE_OPTIMIZERS = ("spam", "stable-spam", "adamw")


def _fused_available(model: nn.Module) -> bool:
    device = next(model.parameters()).device.type
    return device in ("cpu", "cuda")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> Optimizer:
    """The optimizer named by ``cfg.optimizer``, with its typed options and ``cfg.optimizer_kwargs``.

    Example::

        opt = build_optimizer(TrainConfig(optimizer="spam", density=0.25), model)
    """
    common: dict[str, Any] = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.spam_options(),
                                  **cfg.optimizer_kwargs)
    betas = (cfg.beta1, cfg.beta2)
    try:
        if cfg.optimizer == "spam":
            from spam_opt.param_groups import param_groups
            from spam_opt.spam import SPAM

            params = param_groups(model, density=cfg.density) if cfg.density < 1 else model.parameters()
            return SPAM(params, betas=betas, seed=cfg.seed, state_bits=cfg.state_bits, **common)
        if cfg.optimizer == "stable-spam":
            from spam_opt.stable_spam import StableSPAM

            return StableSPAM(model.parameters(), betas=betas, state_bits=cfg.state_bits, **common)
        if cfg.optimizer == "adamw":
            fused = common.pop("fused", _fused_available(model))
            return torch.optim.AdamW(model.parameters(), betas=betas, fused=fused, **common)
        if cfg.optimizer == "muon":
            from trainers.muon import MuonWithAdamW

            fused = common.pop("fused", _fused_available(model))
            return MuonWithAdamW(model, betas=betas, fused=fused, **common)
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("optimizer 'adamw8bit' needs bitsandbytes: "
                                  "pip install spam-opt[bnb]") from err
            return bnb.optim.AdamW8bit(model.parameters(), betas=betas, **common)
        if cfg.optimizer in MEMORY_PEERS:
            return _memory_peer(cfg.optimizer, model, betas, common)
        if cfg.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            # Adafactor's own schedule is off: the trainer's cosine schedule drives lr.
            common = dict(scale_parameter=False, relative_step=False, warmup_init=False) | common
            return Adafactor(model.parameters(), **common)
    except TypeError as err:  # an optimizer_kwargs key the optimizer does not take
        raise ValueError(f"optimizer {cfg.optimizer!r} rejected its options {common}: {err}") from err
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


# GaLore's defaults for the small LLaMA models, as its paper set them: rank a quarter of the hidden size
# (128 at 60M), a new projection every 200 steps, scale 0.25. Each can be set in optimizer_kwargs.
GALORE_DEFAULTS = {"rank_fraction": 0.25, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}


def _memory_peer(name: str, model: nn.Module, betas: tuple[float, float],
                 common: dict[str, Any]) -> Optimizer:
    module, pip_name = MEMORY_PEERS[name]
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"optimizer {name!r} needs the {pip_name} package: pip install spam-opt[memory] "
                          f"({err})") from err
    config = getattr(model, "config", None)
    if name == "torchao-adamw8bit":
        return package.AdamW8bit(model.parameters(), betas=betas, **common)
    if name == "adam-mini":
        heads = getattr(config, "num_attention_heads", None)
        if heads is None:
            raise ValueError("optimizer 'adam-mini' partitions a transformer by its heads: the model needs a "
                             "config with hidden_size and num_attention_heads (the LLaMA presets have one)")
        return package.Adam_mini(model.named_parameters(), betas=betas, dim=config.hidden_size, n_heads=heads,
                                 n_kv_heads=getattr(config, "num_key_value_heads", None), verbose=False,
                                 **common)
    return package.GaLoreAdamW(galore_groups(model, common), betas=betas, **common)


def galore_groups(model: nn.Module, options: dict[str, Any]) -> list[dict[str, Any]]:
    """GaLore's projection on the block matrices (``spam_opt.param_groups``' "blocks"), plain Adam for the
    rest. Takes GaLore's keys (``rank`` or ``rank_fraction`` of the hidden size, ``update_proj_gap``,
    ``scale``, ``proj_type``) out of ``options``, leaving the optimizer's own."""
    from spam_opt.param_groups import param_groups

    keys = {k: options.pop(k, default) for k, default in GALORE_DEFAULTS.items()}
    fraction, rank = keys.pop("rank_fraction"), options.pop("rank", None)
    if rank is None:
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is None:
            raise ValueError("optimizer 'galore' needs optimizer_kwargs {\"rank\": ...} for a model without "
                             "config.hidden_size")
        rank = max(1, round(fraction * hidden))
    return [{"params": g["params"], **({"rank": rank, **keys} if g["name"] == "blocks" else {})}
            for g in param_groups(model)]


def build_spike_guard(cfg: TrainConfig, optimizer: Optimizer) -> Any:
    """``spam_opt.spike_guard.SpikeGuard`` on ``optimizer``; ``guard.step(loss=...)`` replaces its step."""
    from spam_opt.spike_guard import SpikeGuard

    return SpikeGuard(optimizer, sigma=cfg.guard_sigma, window=cfg.guard_window,
                      min_history=cfg.guard_min_history, action=cfg.guard_action)

