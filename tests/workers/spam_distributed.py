"""Worker for the 2-process (gloo) SPAM tests; started by torch.distributed.run.

ddp:  each rank trains a DDP model on its own data with sparse momentum, then saves its parameters.
fsdp: each rank trains an FSDP2-sharded model (torch's fully_shard, DTensor parameters) and rank 0
      compares the gathered parameters, stored moments and 8-bit scales with a single-process run on the
      full batch.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from teardown import end_worker  # beside this script, which runs from this folder
from torch import nn

from spam_opt import SPAM


def _model():
    torch.manual_seed(0)
    # 33 rows: uneven shards across 2 ranks.
    return nn.Sequential(nn.Linear(12, 33), nn.Tanh(), nn.Linear(33, 10), nn.LayerNorm(10))


def _groups(model, density, state_bits=32):
    return [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "density": density,
         "state_bits": state_bits},
        {"params": [p for p in model.parameters() if p.dim() < 2]},
    ]


HYPER = dict(lr=1e-2, weight_decay=0.01, reset_interval=15, warmup_steps=5, clip_delay=3, threshold=100.0)


def _batch(step, rank=None, world=1):
    gen = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(16, 12, generator=gen), torch.randn(16, 10, generator=gen)
    if rank is None:
        return x, y
    n = 16 // world
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def _backward(model, x, y, step):
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def ddp(out: str, steps: int) -> None:
    rank = dist.get_rank()
    model = nn.parallel.DistributedDataParallel(_model())
    opt = SPAM(_groups(model.module, 0.25), **HYPER, seed=11)
    torch.manual_seed(100 + rank)  # a global-RNG mask would now differ between ranks
    for step in range(steps):
        x, y = _batch(step, rank, dist.get_world_size())
        _backward(model, x, y, step)
        if step == 20:
            model.module[0].weight.grad[3, 4] *= 1000.0  # same on both ranks: grads are already reduced
        opt.step()
        opt.zero_grad()
    torch.save({k: v.detach() for k, v in model.module.state_dict().items()}, f"{out}/rank{rank}.pt")


def fsdp(out: str, steps: int, density: float, state_bits: int) -> None:
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    sharded = _model()
    fully_shard(sharded)
    opt = SPAM(_groups(sharded, density, state_bits), **HYPER, seed=5)
    single = _model()
    single_opt = SPAM(_groups(single, density, state_bits), **HYPER, seed=5)
    for step in range(steps):
        _backward(sharded, *_batch(step, rank, world), step)
        opt.step()
        opt.zero_grad()
        _backward(single, *_batch(step), step)
        single_opt.step()
        single_opt.zero_grad()
    worst, diffs = 0.0, []
    for p, q in zip(sharded.parameters(), single.parameters()):
        full = p.full_tensor()
        worst = max(worst, (full - q).abs().max().item())
        diffs += (full - q).abs().view(-1).tolist()
    # Per parameter, the stored moments (one per kept entry) and 8-bit scales (one per block) of the ranks,
    # in rank order, against the single process's: sharding by rows must not move a block.
    keys = ("exp_avg", "exp_avg_scale")
    local = [{k: opt.state[p][k].reshape(-1).tolist() for k in keys if k in opt.state[p]}
             for p in sharded.parameters()]
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    if rank == 0:
        stored_equal, scale_diff = _compare_layouts(gathered, single_opt, list(single.parameters()))
        with open(f"{out}/fsdp_{density}_{state_bits}.json", "w") as f:
            json.dump({"max_abs_diff": worst, "stored_equal": stored_equal, "scale_rel_diff": scale_diff,
                       "abs_diffs": diffs}, f)


def _compare_layouts(gathered, single_opt, params):
    """Whether the ranks' stored moments and scales, joined in rank order, have the single process's sizes;
    and the largest relative difference of the joined scales from the single process's."""
    equal, worst = True, 0.0
    for i, q in enumerate(params):
        state = single_opt.state[q]
        equal &= sum(len(part[i]["exp_avg"]) for part in gathered) == state["exp_avg"].numel()
        if "exp_avg_scale" not in state:
            continue
        scales = torch.tensor([x for part in gathered for x in part[i]["exp_avg_scale"]])
        if scales.shape != state["exp_avg_scale"].shape:
            return False, worst
        rel = (scales - state["exp_avg_scale"]).abs() / state["exp_avg_scale"].abs().clamp_min(1e-12)
        worst = max(worst, rel.max().item())
    return bool(equal), worst


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mode, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "ddp":
        ddp(out, steps)
    else:
        fsdp(out, steps, float(sys.argv[4]), int(sys.argv[5]))
    end_worker()
