"""The step paths on a CUDA device under ``torch.cuda.set_sync_debug_mode("error")``: any host
synchronisation (a read of a device value, a blocking copy) raises.

Marked ``cuda``: without a CUDA device they are skipped with that reason (conftest.py); ``bash
benchmarks/gpu_suite.sh`` runs them on a GPU machine. tests/test_host_syncs.py counts the same syncs on CPU
tensors in the default run. Each case runs 10 steps holding two momentum resets (new sparse masks), a NaN
gradient entry and a loss spike. ``fused=True`` (the Triton steps, whose kernels Triton compiles at their
first launch) is first run unchecked, so that compiling happens outside the check; then a second optimizer
runs under it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_host_syncs import OPTIMIZERS, run_steps

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")
FLAGS = [pytest.param(dict(foreach=True), id="foreach"), pytest.param(dict(fused=True), id="triton")]


@contextlib.contextmanager
def _syncs_raise():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("wrapper", ["", "guard", "monitor"])
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_step_path_makes_no_host_sync_on_cuda(optimizer, flags, wrapper):
    if "fused" in flags:
        run_steps(optimizer, flags, wrapper, DEVICE)  # compiles the kernels
    run_steps(optimizer, flags, wrapper, DEVICE, around=_syncs_raise)
    torch.cuda.synchronize()
