"""No host synchronisation on the step path of any CUDA default, counted on CPU tensors.

CUDA's default path of both optimizers is ``foreach`` (``spam_opt.kernels.dispatch``); ``fused=True`` picks
the Triton step (the compiled one for float64 tensors). Each is run here on CPU tensors under
``tests/host_reads.py``'s counter for 10 steps that hold two momentum resets (new sparse masks), a NaN
gradient entry and a spike, and must make no read of a device value on the host and build no tensor from
host data. benchmarks/gpu_suite.sh runs the same paths on a GPU under
``torch.cuda.set_sync_debug_mode("error")`` (tests/test_cuda_host_syncs.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from host_reads import counting_host_syncs
from stepping import fused_on_cpu
from torch import nn

from spam_opt import SPAM, SpikeGuard, StableSPAM
from spam_opt.monitor import GradientSpikeMonitor

SHAPES = [(6, 5), (7,), (4, 3, 2), (9, 40)]
STEPS = 10
SPAM_HYPER = dict(lr=1e-2, weight_decay=0.1, reset_interval=4, warmup_steps=2, clip_delay=1, threshold=50.0)
STABLE_HYPER = dict(lr=1e-2, weight_decay=0.1, reset_interval=4, total_steps=20)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES)


def _grads(t: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + t)
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    if t == 3:
        grads[0][1, 2] = float("nan")
    if t == 6:
        grads[3].view(-1)[5] *= 1000.0
    return grads


def _optimizer(name: str, params, flags: dict):
    if name.startswith("StableSPAM"):
        return StableSPAM(params, **STABLE_HYPER, state_bits=8 if "8-bit" in name else 32, **flags)
    density = 0.5 if "sparse" in name else 1.0
    return SPAM(params, **SPAM_HYPER, density=density, seed=1, state_bits=8 if "8-bit" in name else 32,
                **flags)


OPTIMIZERS = ["SPAM", "SPAM sparse", "SPAM 8-bit", "SPAM 8-bit sparse", "StableSPAM", "StableSPAM 8-bit"]


def run_steps(optimizer: str, flags: dict, wrapper: str = "", device: torch.device | str = "cpu",
              around: Callable[[], Any] = contextlib.nullcontext) -> list[Any]:
    """10 steps of ``optimizer`` run with ``flags`` (through ``wrapper``), each inside ``around()``; returns
    what each ``around()`` gave."""
    model = _Model().to(device)
    params = list(model.parameters())
    opt = _optimizer(optimizer, params, flags)
    guard = SpikeGuard(opt, sigma=3.0, window=8, min_history=3) if wrapper == "guard" else None
    monitor = (GradientSpikeMonitor(model, optimizer=opt, mode="element", log_every=100)
               if wrapper == "monitor" else None)
    per_step = []
    for t in range(1, STEPS + 1):
        for p, g in zip(params, _grads(t)):
            p.grad = g.to(device)
        loss = torch.tensor(2.0 + (t == 7) * 50.0, device=device)
        with around() as seen:
            if monitor is not None:
                monitor.observe(t, loss=loss)
            if guard is not None:
                guard.step(loss=loss)
            else:
                opt.step()
        per_step.append(seen)
    if monitor is not None:
        monitor._hook.remove()  # no flush: this checks the steps between logging steps
    assert opt.global_step == STEPS and all(bool(torch.isfinite(p).all()) for p in params)
    return per_step


def count_per_step(optimizer: str, flags: dict, wrapper: str = "") -> list[dict[str, int]]:
    """Host syncs of each of 10 steps of ``optimizer`` run with ``flags`` (through ``wrapper``)."""
    counters = run_steps(optimizer, flags, wrapper, around=counting_host_syncs)
    return [dict(c.reads + c.host_data) for c in counters]


@pytest.mark.parametrize("wrapper", ["", "guard", "monitor"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_cuda_default_foreach_step_makes_no_host_sync(optimizer, wrapper, monkeypatch):
    # The monitor's element scores run in C++ on CPU; CUDA's path is the torch one.
    monkeypatch.setattr("spam_opt.monitor.statistics._cpp_takes", lambda grads: False)
    per_step = count_per_step(optimizer, dict(foreach=True), wrapper)
    assert per_step == [{}] * STEPS, per_step


def test_the_counter_sees_the_syncs_it_is_meant_to_see():
    x = torch.randn(5)
    with counting_host_syncs() as counter:
        x.sum().item()
        bool(x[0] > 0)
        x.tolist()
        torch.nonzero(x > 0)
        torch.repeat_interleave(torch.arange(2), torch.ones(2, dtype=torch.int64))
        torch.repeat_interleave(torch.arange(2), torch.ones(2, dtype=torch.int64), output_size=2)  # no read
        torch.nonzero_static(x > 0, size=2)  # no read
        torch.tensor([1.0, 2.0])  # host data
    assert sum(counter.reads.values()) == 5 and sum(counter.host_data.values()) == 1, counter.reads


def test_a_step_path_with_a_host_read_is_caught(monkeypatch):
    """The old foreach step read each bias-correction count with ``.item()``: the counter must see it."""
    from spam_opt.kernels.spam import inputs

    real = inputs.StepScalars

    @dataclasses.dataclass(frozen=True)
    class Reading(real):
        def __post_init__(self):
            torch.ones(()).item()

    monkeypatch.setattr("spam_opt.spam.StepScalars", Reading)
    assert count_per_step("SPAM", dict(foreach=True))[0] == {"aten._local_scalar_dense.default": 1}


@pytest.mark.parametrize("optimizer", ["SPAM 8-bit sparse", "StableSPAM 8-bit"])
def test_compiled_step_makes_no_host_sync(optimizer, monkeypatch):
    """The eager code around the compiled graphs (indices, scalars, reset flags) reads nothing either. The
    graphs themselves cannot: they are compiled with ``fullgraph=True``, so a read inside one would fail the
    compile rather than break the graph. Dynamo does not trace under a dispatch mode, so the graphs run
    outside the counter. The two variants with the most eager work around their graphs: SPAM's (kept and
    stored indices) and Stable-SPAM's (reset flags) compiled modules."""
    from torch.utils._python_dispatch import _disable_current_modes

    from spam_opt.kernels import compiled_lists
    from spam_opt.kernels.spam import compiled as spam_module
    from spam_opt.kernels.stable_spam import compiled as stable_module

    def outside_the_counter(fn):
        graph = compiled_lists.compiled(fn)

        def call(*args):
            with _disable_current_modes():
                return graph(*args)
        return call

    for cls, module, kernel in ((SPAM, spam_module, spam_module.spam_compiled),
                                (StableSPAM, stable_module, stable_module.stable_spam_compiled)):
        monkeypatch.setattr(module, "compiled", outside_the_counter)
        monkeypatch.setattr(cls, "kernels", fused_on_cpu(cls.kernels, kernel))
    per_step = count_per_step(optimizer, dict(fused=True))
    assert per_step == [{}] * STEPS, per_step


class _LaunchOutsideTheCounter:
    """A Triton kernel whose launches run outside the counter: in the interpreter a kernel reads its tensors
    on the host, where on a GPU a launch is queued and reads nothing back."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        from torch.utils._python_dispatch import _disable_current_modes

        launch = self.kernel[grid]

        def call(*args: Any, **kwargs: Any) -> Any:
            with _disable_current_modes():
                return launch(*args, **kwargs)
        return call


@pytest.mark.skipif(torch.cuda.is_available(), reason="no Triton interpreter on a GPU machine (conftest.py)")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_triton_step_makes_no_host_sync(optimizer, monkeypatch):
    """The torch ops around the Triton kernels (bias corrections, counts, the per-draw bitmaps and kept
    counts per span or block, Stable-SPAM's per-tensor scalars) read nothing on the host, for every
    layout."""
    from spam_opt.kernels.spam import triton_kernel as spam_triton
    from spam_opt.kernels.spam.foreach import spam_foreach
    from spam_opt.kernels.stable_spam import triton_kernel as stable_triton
    from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach

    for cls, module, kernel in ((SPAM, spam_triton, spam_triton.spam_triton_with(spam_foreach)),
                                (StableSPAM, stable_triton,
                                 stable_triton.stable_spam_triton_with(stable_spam_foreach))):
        kernels = tuple(_LaunchOutsideTheCounter(k) for k in module._kernels())
        monkeypatch.setattr(module, "_kernels", lambda kernels=kernels: kernels)
        monkeypatch.setattr(cls, "kernels", fused_on_cpu(cls.kernels, kernel))
    per_step = count_per_step(optimizer, dict(fused=True))
    assert per_step == [{}] * STEPS, per_step
