"""The trainer's two engines behind one interface: Accelerate (one process, DDP) and FSDP2 (``--fsdp``).

An engine owns what differs between them: the process group around a run, how the model and the optimizer
are wrapped, how gradients accumulate without a reduction, the checkpoint store, and how the full weights
are gathered for export. The loop in ``trainers.pretrain`` calls these and nothing engine-specific.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from trainers import sharding
from trainers.checkpointing import AccelerateState, CheckpointStore
from trainers.config import TrainConfig
from trainers.sharded_checkpoint import ShardedState


class Engine(Protocol):
    """What the loop asks of an engine. ``accelerator`` serves both (devices, ranks, reductions, trackers)."""

    accelerator: Any

    def session(self) -> AbstractContextManager[None]:
        """The context the whole run happens in (FSDP2: the process group)."""

    def prepare(self, model: nn.Module, make_optimizer: Callable[[nn.Module], Any]) -> tuple[nn.Module, Any]:
        """The model and its optimizer, wrapped for training; the optimizer is built on the wrapped model."""

    def no_sync(self, model: nn.Module) -> AbstractContextManager[None]:
        """Accumulate gradients without reducing them (every micro-batch but a step's last)."""

    def store(self, model: nn.Module, optimizer: Any, stateful: dict[str, Any]) -> CheckpointStore:
        """The checkpoint store of the model, the unwrapped optimizer and the loop's ``stateful`` objects."""

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full weights on the main process, for export. Collective."""


class AccelerateEngine:
    """One process or DDP through Accelerate: ``prepare``, its ``no_sync``, ``save_state``.

    Example::

        engine = AccelerateEngine(Accelerator())
        model, optimizer = engine.prepare(model, lambda m: torch.optim.AdamW(m.parameters()))
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def session(self) -> AbstractContextManager[None]:
        return nullcontext()

    def prepare(self, model: nn.Module, make_optimizer: Callable[[nn.Module], Any]) -> tuple[nn.Module, Any]:
        return self.accelerator.prepare(model, make_optimizer(model))

    def no_sync(self, model: nn.Module) -> AbstractContextManager[None]:
        return self.accelerator.no_sync(model)

    def store(self, model: nn.Module, optimizer: Any, stateful: dict[str, Any]) -> CheckpointStore:
        # The model and optimizer are Accelerate's already; the rest it saves once registered.
        self.accelerator.register_for_checkpointing(*stateful.values())
        return AccelerateState(self.accelerator)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.accelerator.get_state_dict(model)


class FSDP2Engine:
    """torch's ``fully_shard`` applied by the trainer, DCP checkpoints; Accelerate never sees the model.

    Example::

        engine = FSDP2Engine(Accelerator(mixed_precision="no"), "bf16")
        with engine.session():
            model, optimizer = engine.prepare(model, lambda m: SPAM(m.parameters()))
    """

    def __init__(self, accelerator: Any, mixed_precision: str) -> None:
        self.accelerator, self.mixed_precision = accelerator, mixed_precision

    def session(self) -> AbstractContextManager[None]:
        return sharding.process_group(self.accelerator.device)

    def prepare(self, model: nn.Module, make_optimizer: Callable[[nn.Module], Any]) -> tuple[nn.Module, Any]:
        # Shard first: the optimizer is built on the sharded parameters. Accelerate wraps only the optimizer.
        model = sharding.shard_model(model, self.mixed_precision, self.accelerator.device)
        return model, self.accelerator.prepare(make_optimizer(model))

    def no_sync(self, model: nn.Module) -> AbstractContextManager[None]:
        return sharding.no_sync(model)

    def store(self, model: nn.Module, optimizer: Any, stateful: dict[str, Any]) -> CheckpointStore:
        return ShardedState(model, optimizer, stateful)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return sharding.full_state_dict(model)


def build_engine(cfg: TrainConfig, project_config: Any) -> Engine:
    """The run's engine and its Accelerator (``cfg.fsdp``: FSDP2, else Accelerate)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps its state in a process-wide singleton; forget the previous run's (mixed precision,
    # plugins) so that a run can follow another in one process, as the tests do. The process group stays.
    AcceleratorState._reset_state()
    if cfg.fsdp:
        sharding.disable_accelerate_fsdp()
        # The sharding's mixed-precision policy casts; Accelerate never sees the model.
        accelerator = Accelerator(mixed_precision="no", log_with=cfg.trackers or None,
                                  project_config=project_config)
        return FSDP2Engine(accelerator, cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.trackers or None,
                              project_config=project_config)
    return AccelerateEngine(accelerator)
