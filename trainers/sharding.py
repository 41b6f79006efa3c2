"""FSDP2 for the trainer (``--fsdp``): torch's ``fully_shard`` per block and on the root.

The trainer applies the sharding itself, on CPU (gloo) and GPUs (nccl) alike, and never hands the model to
``accelerator.prepare``: Accelerate's own FSDP plugin is switched off (``disable_accelerate_fsdp``), so the
two never both shard the model. Each parameter becomes a DTensor sharded along dim 0 over all processes;
the optimizer then steps the local shards. With ``mixed_precision="bf16"`` the policy computes in bf16 and
reduces gradients in float32, over float32 master weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)


def disable_accelerate_fsdp() -> None:
    """Tell Accelerate not to apply its FSDP plugin (``accelerate launch --use_fsdp`` or a config file)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        logger.warning("--fsdp: the trainer shards the model with torch's fully_shard; Accelerate's FSDP "
                       "plugin and its settings are switched off for this run")
    os.environ["ACCELERATE_USE_FSDP"] = "false"


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The default process group that FSDP2 needs: the launcher's, or a one-process group held in memory."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():  # Accelerator.end_training destroys it at the end of a run
            dist.destroy_process_group()


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the modules whose class its ``_no_split_modules`` names."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise ValueError(f"--fsdp shards a model block by block, but {type(model).__name__} names no blocks "
                         "(_no_split_modules); use a model that does, or drop --fsdp")
    return found


def shard_model(model: nn.Module, mixed_precision: str, device: torch.device) -> nn.Module:
    """``model`` on ``device``, sharded over all processes with ``fully_shard`` (in place, and returned).

    Example::

        with process_group(torch.device("cpu")):
            model = shard_model(build_model("llama-tiny", 257, 64), "no", torch.device("cpu"))
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    model.to(device)
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


@contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients without reducing them (the micro-batches before the last of a step)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) weights on the CPU of the main process; empty elsewhere. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
