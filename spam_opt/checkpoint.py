"""SPAM and StableSPAM state in a global layout, which ``torch.distributed.checkpoint`` (DCP) can reshard.

The optimizers keep their state as plain tensors of each rank's own shard, and sparse momentum keeps only the
kept entries, as one vector in kept order. DCP cannot reshard either: it reshards DTensors, by global index.
So a checkpoint holds every state tensor in the parameter's global layout instead, keyed by parameter name:

* per-entry tensors (one value per entry, or per kept entry) are scattered into a tensor of the parameter's
  full shape, sharded like the parameter (zeros where an entry is not kept);
* per-block tensors (the 8-bit state's scales, one per block of a row) are laid out with one row per row of
  the parameter's dim 0, and sharded by rows;
* scalars, the same on every rank, are saved as they are;
* the kept-entry index (or bitmap) is not saved: which entries are kept is a pure function of (seed,
  parameter, reset number, global entry index), so a load draws it again for the new shards and gathers
  their moments.

A run saved on N processes therefore resumes on M with exactly the state it had. ``STATE_LAYOUT`` says which
rule each state key follows (``spam_opt.state.checkpoint_layout``); a new state key joins by adding a line
there. docs/spam.md has the details.

Example::

    import torch.distributed.checkpoint as dcp
    from spam_opt.checkpoint import global_state_dict, load_global_state_dict

    dcp.save({"optimizer": global_state_dict(model, opt)}, checkpoint_id="ckpt")
    # later, on any number of processes, with the model sharded the same way or another:
    state = {"optimizer": global_state_dict(model, opt)}  # the template dcp.load fills in place
    dcp.load(state, checkpoint_id="ckpt")
    load_global_state_dict(model, opt, state["optimizer"])
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from spam_opt._distributed import local_tensor
from spam_opt._optimizer import SpikeAwareOptimizer
from spam_opt.state.checkpoint_layout import STATE_LAYOUT, Layout, layout_of
from spam_opt.state.kept import BITMAP_KEY, kept_flat_indices
from spam_opt.state.layout import draw_kept_state
from spam_opt.state.quantized import blocks_per_row, quantizes


def _named_params(model: nn.Module,
                  optimizer: SpikeAwareOptimizer) -> list[tuple[str, Tensor, dict[str, Any]]]:
    """(name, parameter, its group) for every parameter of ``optimizer``, in the optimizer's order."""
    if not isinstance(optimizer, SpikeAwareOptimizer):
        raise ValueError(f"the global layout is for SPAM and StableSPAM, got {type(optimizer).__name__}; "
                         "save other optimizers with torch.distributed.checkpoint.state_dict")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"a parameter of the optimizer (shape {tuple(p.shape)}) is not a parameter "
                                 "of the model: pass the model the optimizer was built on")
            out.append((names[id(p)], p, group))
    return out


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _as_global(p: Tensor, local: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``local`` (this rank's block) as a tensor of global ``shape`` sharded like ``p``."""
    if not hasattr(p, "device_mesh"):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local.contiguous(), p.device_mesh, p.placements, run_check=False, shape=shape,
                              stride=_contiguous_stride(shape))


def _entry_to_global(p: Tensor, key: str, value: Tensor, kept: Tensor | None) -> Tensor:
    local = local_tensor(p)
    if kept is not None:
        value = value.new_zeros(local.numel()).index_copy_(0, kept, value)
    return _as_global(p, value.reshape(local.shape), tuple(p.shape))


def _block_to_global(p: Tensor, key: str, value: Tensor, kept: Tensor | None) -> Tensor:
    # Blocks never cross a row of the last dimension, so each row of dim 0 owns the same number of them.
    per_row = math.prod(p.shape[1:-1]) * blocks_per_row(p.shape[-1])
    rows = local_tensor(p).shape[0]
    if value.numel() != rows * per_row:
        raise ValueError(f"per-block state {key!r} has {value.numel()} values but the parameter's shard has "
                         f"{rows} rows of {per_row} blocks")
    return _as_global(p, value.reshape(rows, per_row), (p.shape[0], per_row))


# (parameter, key, value, kept flat indices or None) -> what the checkpoint holds
_TO_GLOBAL = {
    Layout.ENTRY: _entry_to_global,
    Layout.BLOCK: _block_to_global,
    Layout.SCALAR: lambda p, key, value, kept: value,
    Layout.KEPT: lambda p, key, value, kept: True,
}
# (loaded value, key, the kept-entry state drawn again or None, the kept flat indices or None)
#     -> what the optimizer holds
_FROM_GLOBAL = {
    Layout.ENTRY: lambda value, key, drawn, indices: (local_tensor(value) if indices is None
                                                      else local_tensor(value).reshape(-1)[indices]),
    Layout.BLOCK: lambda value, key, drawn, indices: local_tensor(value).reshape(-1),
    Layout.SCALAR: lambda value, key, drawn, indices: value,
    Layout.KEPT: lambda value, key, drawn, indices: drawn[key],
}


def _init_missing_state(optimizer: SpikeAwareOptimizer) -> None:
    """Give every parameter without state the state its first step would create (without stepping)."""
    index = -1
    for group in optimizer.param_groups:
        plan = optimizer._plan(group, optimizer.global_step)
        for p in group["params"]:
            index += 1
            if not optimizer.state[p]:
                optimizer._parameter_state(p, group, index, plan)


def global_state_dict(model: nn.Module, optimizer: SpikeAwareOptimizer) -> dict[str, Any]:
    """``optimizer``'s state in the global layout, keyed by the names of ``model``'s parameters.

    ``{"state": {name: {key: value}}, "param_groups": (group, ...)}``; groups list their parameters by name.
    A parameter without state first gets the state its first step would create (zeros), so on a fresh
    optimizer this is the template that ``dcp.load`` fills in place. Every rank must call it.
    """
    named = _named_params(model, optimizer)
    _init_missing_state(optimizer)
    groups = optimizer.state_dict()["param_groups"]  # hyperparameters and the global step
    position = 0
    saved_groups = []
    for group in groups:
        count = len(group["params"])
        saved_groups.append(dict(group, params=[n for n, _, _ in named[position: position + count]]))
        position += count
    state = {}
    for name, p, _ in named:
        entry = optimizer.state[p]
        kept = kept_flat_indices(entry, local_tensor(p).numel())
        state[name] = {key: _TO_GLOBAL[layout_of(key)](p, key, value, kept) for key, value in entry.items()}
    # A tuple is one leaf for DCP (saved pickled), where a list of dicts would be flattened key by key.
    return {"state": state, "param_groups": tuple(saved_groups)}


def _draw(optimizer: SpikeAwareOptimizer, p: Tensor, group: dict[str, Any], index: int, reset_number: int,
          bitmap: bool) -> tuple[dict[str, Tensor], Tensor]:
    """The kept entries of this rank's shard of ``p`` that the optimizer drew at reset ``reset_number``: as
    its state keys (the bitmap of the 8-bit layout, or the index of the float32 one), and as flat local
    indices."""
    draw = optimizer._kept_draw(p, group, index, reset_number)
    if draw is None:
        raise ValueError(f"the checkpoint holds kept entries for parameter {index}, which its param group "
                         "keeps dense: build the optimizer's groups as the saved run did")
    drawn, _ = draw_kept_state(p, draw, bitmap)
    return drawn, kept_flat_indices(drawn, local_tensor(p).numel())


def load_global_state_dict(model: nn.Module, optimizer: SpikeAwareOptimizer,
                           state_dict: dict[str, Any]) -> None:
    """Load a state saved by ``global_state_dict`` (and filled by ``dcp.load``), on any sharding of ``model``.

    The kept entries of sparse momentum are drawn again for this rank's shards, and their moments gathered.
    """
    named = _named_params(model, optimizer)
    saved_groups = state_dict["param_groups"]
    current = [[n for n, _, g in named if g is group] for group in optimizer.param_groups]
    saved_names = [list(g["params"]) for g in saved_groups]
    if saved_names != current:
        raise ValueError("the optimizer's parameter groups differ from the checkpoint's (names or order of "
                         "the parameters): build the model and the optimizer's groups as the saved run did")
    groups, position = [], 0
    for group in saved_groups:
        count = len(group["params"])
        groups.append(dict(group, params=list(range(position, position + count))))
        position += count
    group_of = [g for g in saved_groups for _ in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for index, (name, p, _) in enumerate(named):
        saved = state_dict["state"].get(name)
        if saved is None:
            continue
        drawn, indices = None, None
        if any(STATE_LAYOUT.get(k) is Layout.KEPT for k in saved):
            bitmap = BITMAP_KEY in saved
            drawn, indices = _draw(optimizer, p, group_of[index], index, int(saved["reset_number"]), bitmap)
        state[index] = {k: _FROM_GLOBAL[layout_of(k)](v, k, drawn, indices) for k, v in saved.items()}
        if quantizes(p, group_of[index].get("state_bits", 32)):  # 8-bit codes are one flat vector
            for key in ("exp_avg", "exp_avg_sq"):
                state[index][key] = state[index][key].reshape(-1)
    optimizer.load_state_dict({"state": state, "param_groups": groups})

