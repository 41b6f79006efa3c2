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


@pytest.mark.parametrize("density", [1.0, 0.25])
def test_fsdp2_sharded_step_matches_single_process(tmp_path, density):
    _launch("fsdp", str(tmp_path), "40", str(density))
    result = json.loads((tmp_path / f"fsdp_{density}.json").read_text())
    assert result["max_abs_diff"] < 1e-5, result
    # each rank keeps exactly its shard's part of the entries a single process keeps
    assert result["kept_sharded"] == result["kept_single"]
