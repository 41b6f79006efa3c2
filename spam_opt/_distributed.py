"""What every part of spam-opt needs to know about sharded (FSDP2 / DTensor) tensors, in one place."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# The process groups across which a tensor's entries are split; () for a tensor that is not sharded.
ShardGroups = tuple[object, ...]


def local_tensor(t: Tensor) -> Tensor:
    """The rank-local block of a DTensor (an FSDP2 shard), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def shard_groups(t: Tensor) -> ShardGroups:
    """The process groups over which a DTensor is split: sums and maxima of its entries reduce over them."""
    if not hasattr(t, "device_mesh"):
        return ()
    return tuple(t.device_mesh.get_group(dim) for dim, placement in enumerate(t.placements)
                 if placement.is_shard())


def all_reduce(value: Tensor, groups: ShardGroups, op: str) -> Tensor:
    """Combine a per-shard statistic (``op`` "sum" or "max") into the full tensor's, in place."""
    if not groups:
        return value
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    for group in groups:
        dist.all_reduce(value, op=reduce_op, group=group)
    return value


def all_reduce_per_tensor(values: Tensor, groups_per_tensor: Sequence[ShardGroups], op: str) -> Tensor:
    """``all_reduce`` of a vector of one statistic per tensor: one collective per distinct set of groups.

    Entries of unsharded tensors (groups ``()``) keep their local value.
    """
    by_groups: dict[ShardGroups, list[int]] = {}
    for i, groups in enumerate(groups_per_tensor):
        if groups:
            by_groups.setdefault(groups, []).append(i)
    for groups, positions in by_groups.items():
        index = torch.tensor(positions, device=values.device)
        values = values.index_copy(0, index, all_reduce(values.index_select(0, index), groups, op))
    return values


def flat_span(p: Tensor) -> tuple[int, int]:
    """(number of entries, flat index of the first) of the run of the flattened full tensor this rank holds.

    The whole tensor for an unsharded one. A DTensor must be sharded along dim 0 only (FSDP2's ``Shard(0)``),
    so that its rank-local block is one contiguous run of the flattened full tensor.
    """
    if not hasattr(p, "device_mesh"):
        return p.numel(), 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offsets = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    trailing = tuple(p.shape[1:])
    if tuple(local_shape[1:]) != trailing or any(o != 0 for o in offsets[1:]):
        raise NotImplementedError(
            f"sparse momentum supports parameters sharded along dim 0 only, got placements {p.placements}; "
            "use density=1.0 for this parameter"
        )
    return math.prod(local_shape), offsets[0] * math.prod(trailing)
