"""SPAM under 2-process data parallelism (DDP) and FSDP2 sharding, gloo backend on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "workers" / "spam_distributed.py"
pytestmark = pytest.mark.distributed


def _launch(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ddp_ranks_stay_bitwise_identical_with_sparse_momentum(tmp_path):
    _launch("ddp", str(tmp_path), "50")
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    fresh = torch.nn.Linear(12, 33)
    assert not torch.equal(a["0.weight"], fresh.weight)  # it did train


@pytest.mark.parametrize(("density", "state_bits"), [(1.0, 32), (0.25, 32), (1.0, 8), (0.25, 8)])
def test_fsdp2_sharded_step_matches_single_process(tmp_path, density, state_bits):
    _launch("fsdp", str(tmp_path), "40", str(density), str(state_bits))
    result = json.loads((tmp_path / f"fsdp_{density}_{state_bits}.json").read_text())
    # each rank keeps exactly its shard's part of the entries (and 8-bit blocks) a single process keeps
    assert result["stored_equal"], result
    if state_bits == 32:
        assert result["max_abs_diff"] < 1e-5, result
        return
    # The ranks' gradients differ from the single process's in the last bits (a reduce-scatter of two halves
    # against one full batch), so a code at a rounding tie may take its neighbour: one code step of r, about
    # lr / 100, in that entry's next few updates. The scales (block maxima) agree to float32 rounding.
    diffs = torch.tensor(result["abs_diffs"])
    assert (diffs > 1e-5).float().mean() <= 0.01 and diffs.max() < 1e-3, result["max_abs_diff"]
    assert result["scale_rel_diff"] < 1e-3
