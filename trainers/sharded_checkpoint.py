"""The ``--fsdp`` checkpoint store: ``torch.distributed.checkpoint`` (DCP), each process writing its shards.

One DCP checkpoint holds three parts:

* ``model``: the sharded weights (``get_model_state_dict``), keyed by parameter name;
* ``optimizer``: SPAM and StableSPAM in ``spam_opt.checkpoint``'s global layout, other optimizers (AdamW)
  through torch's ``get_optimizer_state_dict``, whose state already has the parameters' sharding;
* ``trainer``: the loop position, the LR schedule, the spike guard and the RNG, the same on every process.

Every tensor is saved by global index, so a checkpoint written by N processes loads on M. The checkpoint
folder must be on a filesystem that every process (every node) reads and writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class ShardedState:
    """Saves and loads the model, the optimizer and ``stateful`` objects (``state_dict``/``load_state_dict``).

    Example::

        store = ShardedState(model, optimizer, {"scheduler": scheduler, "train": state})
        store.save(Path("ckpt"))  # on every process
        store.load(Path("ckpt"))
    """

    format = "dcp"

    def __init__(self, model: nn.Module, optimizer: Any, stateful: dict[str, Any]) -> None:
        self.model, self.optimizer, self.stateful = model, optimizer, stateful

    def _global_layout(self) -> bool:
        from spam_opt._optimizer import SpikeAwareOptimizer

        return isinstance(self.optimizer, SpikeAwareOptimizer)

    def _state(self) -> dict[str, Any]:
        """The checkpoint's content now; on load, the template that ``dcp.load`` fills in place."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        from torch.distributed.fsdp import FSDPModule

        # A forward without backward (evaluation) leaves the root's parameters gathered; the optimizer
        # and the checkpoint know the sharded ones.
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        if self._global_layout():
            from spam_opt.checkpoint import global_state_dict

            optimizer = global_state_dict(self.model, self.optimizer)
        else:
            optimizer = get_optimizer_state_dict(self.model, self.optimizer)
        trainer = {name: _to_cpu(obj.state_dict()) for name, obj in self.stateful.items()}
        trainer["rng"] = _rng_state()
        # A tuple is one leaf for DCP (saved pickled, once): these values are the same on every process.
        return {"model": get_model_state_dict(self.model), "optimizer": optimizer, "trainer": (trainer,)}

    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(folder))

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._state()
        try:
            dcp.load(state, checkpoint_id=str(folder))
        except CheckpointException as err:  # a BaseException: a caller's `except Exception` would miss it
            raise RuntimeError(f"reading {folder} failed on rank(s) {sorted(err.failures)}: "
                               f"{_first_failure(err)}") from err
        set_model_state_dict(self.model, state["model"])
        if self._global_layout():
            from spam_opt.checkpoint import load_global_state_dict

            load_global_state_dict(self.model, self.optimizer, state["optimizer"])
        else:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        (trainer,) = state["trainer"]
        for name, obj in self.stateful.items():
            obj.load_state_dict(trainer[name])
        _set_rng_state(trainer["rng"])


def _first_failure(err: BaseException) -> str:
    exc, _ = next(iter(err.failures.values()))
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _to_cpu(value: Any) -> Any:
    """``value`` with its tensors on the CPU: a pickled device tensor would load on the saving rank's."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
