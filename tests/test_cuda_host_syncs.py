"""The step paths on a CUDA device under ``torch.cuda.set_sync_debug_mode("error")``: any host
synchronisation (a read of a device value, a blocking copy) raises.

Marked ``cuda``: without a CUDA device they are skipped with that reason (conftest.py); ``bash
benchmarks/gpu_suite.sh`` runs them on a GPU machine. tests/test_host_syncs.py counts the same syncs on CPU
tensors in the default run. Each case runs 10 steps holding two momentum resets (new sparse masks), a NaN
gradient entry and a loss spike. The compiled steps are compiled by a first, unchecked run (Inductor may
synchronise while it compiles and autotunes), then a second optimizer runs under the check.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_host_syncs import OPTIMIZERS, STEPS, _grads, _Model, _optimizer

from spam_opt import SpikeGuard
from spam_opt.monitor import GradientSpikeMonitor

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")
FLAGS = [pytest.param(dict(foreach=True), id="foreach"), pytest.param(dict(fused=True), id="compiled")]


@contextlib.contextmanager
def _syncs_raise():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _run(optimizer: str, flags: dict, wrapper: str, checked: bool) -> None:
    model = _Model().to(DEVICE)
    params = list(model.parameters())
    opt = _optimizer(optimizer, params, flags)
    guard = SpikeGuard(opt, sigma=3.0, window=8, min_history=3) if wrapper == "guard" else None
    monitor = (GradientSpikeMonitor(model, optimizer=opt, mode="element", log_every=100)
               if wrapper == "monitor" else None)
    for t in range(1, STEPS + 1):
        grads = [g.to(DEVICE) for g in _grads(t)]
        loss = torch.tensor(2.0 + (t == 7) * 50.0, device=DEVICE)
        for p, g in zip(params, grads):
            p.grad = g
        with _syncs_raise() if checked else contextlib.nullcontext():
            if monitor is not None:
                monitor.observe(t, loss=loss)
            if guard is not None:
                guard.step(loss=loss)
            else:
                opt.step()
    torch.cuda.synchronize()
    assert opt.global_step == STEPS and all(bool(torch.isfinite(p).all()) for p in params)
    if monitor is not None:
        monitor.close()


@pytest.mark.parametrize("wrapper", ["", "guard", "monitor"])
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_step_path_makes_no_host_sync_on_cuda(optimizer, flags, wrapper):
    if "fused" in flags:
        _run(optimizer, flags, wrapper, checked=False)  # compiles the graphs
    _run(optimizer, flags, wrapper, checked=True)
