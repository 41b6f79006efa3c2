"""Worker for the FSDP2 tests: runs a list of jobs in one ``torch.distributed.run`` launch (gloo on CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/workers/fsdp_jobs.py JOBS.json

Jobs (a JSON list, run in order by every process):

* ``{"train": [flags...], "interrupt_at": I}``: ``trainers.pretrain.main(flags)``; with ``interrupt_at`` the
  run dies when it fetches micro-batch I (counted from 0), as a killed job would.
* ``{"save_state": DIR}``: train small FSDP2 models with SPAM (sparse momentum, a momentum reset), with SPAM
  in 8 bits (the same, and a layer whose rows hold two blocks) and with StableSPAM (float32 and 8-bit
  moments), save the optimizers with ``spam_opt.checkpoint`` and DCP to ``DIR/ckpt``, and write the state
  every rank held, assembled by global index, to ``DIR/state_<world>.pt``.
* ``{"load_state": DIR, "then_save": DIR2}``: load ``DIR/ckpt`` into fresh optimizers on this number of
  processes and write what every rank now holds to ``DIR/loaded_<world>.pt``; save it again to ``DIR2/ckpt``,
  and let rank 0 alone load that into an unsharded model (one process, no FSDP): ``DIR2/loaded_1.pt``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from teardown import end_worker  # beside this script, which runs from this folder
from torch import nn

from spam_opt import SPAM, StableSPAM
from spam_opt._distributed import local_tensor
from spam_opt.checkpoint import global_state_dict, load_global_state_dict
from spam_opt.state.kept import kept_flat_indices

SEED, DENSITY = 7, 0.3
KINDS = ("spam", "stable", "spam8", "stable8")
# 300: each row of the first 8-bit layer holds two blocks
IN_FEATURES = {"spam": 12, "stable": 12, "spam8": 300, "stable8": 300}


def _models(shard: bool) -> tuple[nn.Module, ...]:
    from torch.distributed.fsdp import fully_shard

    models = []
    for kind in KINDS:
        torch.manual_seed(0)
        # 37 and 13 rows: uneven shards on 2 and on 4 ranks.
        model = nn.Sequential(nn.Linear(IN_FEATURES[kind], 37), nn.Tanh(), nn.Linear(37, 13),
                              nn.LayerNorm(13))
        if shard:
            fully_shard(model)
        models.append(model)
    return tuple(models)


def _spam(model: nn.Module, **kwargs) -> SPAM:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return SPAM([{"params": matrices, "density": DENSITY}, {"params": others}], lr=1e-2, seed=SEED,
                reset_interval=4, warmup_steps=2, clip_delay=1, threshold=3.0, **kwargs)


def _optimizers(spam_model: nn.Module, stable_model: nn.Module, spam8_model: nn.Module,
                stable8_model: nn.Module) -> tuple:
    return (_spam(spam_model), StableSPAM(stable_model.parameters(), lr=1e-2, reset_interval=5),
            _spam(spam8_model, state_bits=8),
            StableSPAM(stable8_model.parameters(), lr=1e-2, reset_interval=5, state_bits=8))


def _rows(p: torch.Tensor) -> tuple[int, int]:
    """(first row, number of rows) of this rank's shard of ``p``, from torch's own sharding arithmetic."""
    if not hasattr(p, "device_mesh"):
        return 0, p.shape[0]
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return offset[0], shape[0]


def _raw(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict]:
    """This rank's state as the optimizer holds it, with the kept entries as global flat indices."""
    out = {}
    for name, p in model.named_parameters():
        state = opt.state[p]
        first_row, _ = _rows(p)
        entry = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in state.items()
                 if k not in ("kept_low", "kept_starts", "kept_bits")}
        kept = kept_flat_indices(state, local_tensor(p).numel())
        if kept is not None:
            entry["kept"] = kept + first_row * math.prod(p.shape[1:])
        out[name] = entry
    return out


def _assemble(pieces: list[dict[str, dict]]) -> dict[str, dict]:
    """Every rank's ``_raw`` state joined into the full state: shards in rank order are in row order."""
    full = {}
    for name, first in pieces[0].items():
        joined = {}
        for key, value in first.items():
            values = [piece[name][key] for piece in pieces]
            if torch.is_tensor(value) and value.dim() > 0:
                joined[key] = torch.cat([v.reshape(-1) for v in values])
            else:
                same = all(torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values)
                assert same, f"{name}.{key} differs between ranks"
                joined[key] = value
        full[name] = joined
    return full


def _dump(models: tuple[nn.Module, ...], opts: tuple, path: Path) -> None:
    raw = {kind: _raw(model, opt) for kind, model, opt in zip(KINDS, models, opts)}
    pieces = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, raw)
    if dist.get_rank() == 0:
        torch.save({kind: _assemble([piece[kind] for piece in pieces]) for kind in raw}, path)


def _checkpoint(models: tuple[nn.Module, ...], opts: tuple) -> dict:
    return {kind: global_state_dict(model, opt) for kind, model, opt in zip(KINDS, models, opts)}


def _load(models: tuple[nn.Module, ...], opts: tuple, folder: Path, **kwargs) -> None:
    state = _checkpoint(models, opts)
    dcp.load(state, checkpoint_id=str(folder), **kwargs)
    for kind, model, opt in zip(KINDS, models, opts):
        load_global_state_dict(model, opt, state[kind])


def save_state(folder: Path) -> None:
    models = _models(shard=True)
    opts = _optimizers(*models)
    for step in range(7):  # a momentum reset at step 4 redraws the kept entries
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(8, 300, generator=gen)[dist.get_rank()::dist.get_world_size()]
        for kind, model, opt in zip(KINDS, models, opts):
            model(x[:, :IN_FEATURES[kind]]).square().mean().backward()
            opt.step()
            opt.zero_grad()
    dcp.save(_checkpoint(models, opts), checkpoint_id=str(folder / "ckpt"))
    _dump(models, opts, folder / f"state_{dist.get_world_size()}.pt")


def load_state(folder: Path, then_save: Path) -> None:
    models = _models(shard=True)
    opts = _optimizers(*models)
    _load(models, opts, folder / "ckpt")
    _dump(models, opts, folder / f"loaded_{dist.get_world_size()}.pt")
    dcp.save(_checkpoint(models, opts), checkpoint_id=str(then_save / "ckpt"))
    dist.barrier()
    if dist.get_rank() == 0:
        models = _models(shard=False)
        opts = _optimizers(*models)
        _load(models, opts, then_save / "ckpt", no_dist=True)
        raw = {kind: _raw(model, opt) for kind, model, opt in zip(KINDS, models, opts)}
        torch.save({kind: _assemble([state]) for kind, state in raw.items()}, then_save / "loaded_1.pt")


def train(flags: list[str], interrupt_at: int | None) -> None:
    from trainers import data
    from trainers.pretrain import main

    if interrupt_at is None:
        main(flags)
        return
    original = data.BlockBatches.__getitem__

    def dying(self, index):
        if self.shuffle and index == interrupt_at:
            raise KeyboardInterrupt
        return original(self, index)

    data.BlockBatches.__getitem__ = dying
    try:
        main(flags)
    except KeyboardInterrupt:
        pass
    finally:
        data.BlockBatches.__getitem__ = original


if __name__ == "__main__":
    from accelerate.state import PartialState

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    # Each run's Accelerator.end_training would destroy the process group that the next job needs.
    PartialState.destroy_process_group = lambda self, group=None: None
    for job in json.loads(Path(sys.argv[1]).read_text()):
        if "train" in job:
            train(job["train"], job.get("interrupt_at"))
        elif "save_state" in job:
            save_state(Path(job["save_state"]))
        else:
            load_state(Path(job["load_state"]), Path(job["then_save"]))
        dist.barrier()
    end_worker()
