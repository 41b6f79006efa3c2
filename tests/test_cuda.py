"""SPAM and StableSPAM on a CUDA device: the float64 references, exact resume, the Triton and compiled steps.

Marked ``cuda``: without a CUDA device they are skipped with that reason (conftest.py). ``bash
benchmarks/gpu_suite.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from reference_spam import ReferenceSPAM
from stepping import step_and_count
from test_spam import SCHEDULE, _grad_stream
from test_stable_spam import HYPER, Float64StableSPAM
from test_stable_spam import _grad_stream as _stable_stream
from test_triton_steps import LOW_PRECISION_LAYOUTS, assert_low_precision_steps_round_once_to_nearest_even
from torch import nn

from spam_opt import SPAM, StableSPAM
from spam_opt.kernels.dispatch import Candidate
from spam_opt.kernels.spam.compiled import spam_compiled

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")
SHAPES = [(6, 5), (7,), (4, 3, 2), (9, 4)]
# foreach is CUDA's default path; fused=True is the Triton kernel (the compiled step for strided tensors).
SPAM_PATHS = [pytest.param(dict(foreach=True), id="foreach"), pytest.param(dict(fused=True), id="fused")]


def _params(device: torch.device) -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)).to(device))
            for i, s in enumerate(SHAPES)]


def _on(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return [g.to(DEVICE) for g in grads]


@pytest.mark.parametrize("flags", SPAM_PATHS)
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_spam_on_cuda_matches_the_float64_reference(flags, density):
    params = _params(DEVICE)
    hyper = dict(lr=1e-2, weight_decay=0.1, density=density, seed=3, **SCHEDULE)
    opt = SPAM(params, **flags, **hyper)
    ref = ReferenceSPAM([p.detach().cpu() for p in params], **hyper)
    for t, grads in enumerate(_grad_stream(SHAPES, 120), start=1):
        clipped, nonfinite = step_and_count(opt, params, _on(grads))
        ref.step(grads)
        assert (clipped, nonfinite) == (ref.clipped, ref.nonfinite), t
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().cpu().double(), r, rtol=2e-5, atol=2e-6, msg=f"step {t}")


@pytest.mark.parametrize("flags", SPAM_PATHS)
def test_stable_spam_on_cuda_matches_the_float64_reference(flags):
    params = _params(DEVICE)
    opt = StableSPAM(params, **flags, **HYPER)
    ref = Float64StableSPAM([p.detach().cpu() for p in params], **HYPER)
    for t, grads in enumerate(_stable_stream(SHAPES, 120), start=1):
        clipped, _ = step_and_count(opt, params, _on(grads))
        ref.step(grads)
        # float32 and float64 may disagree on an entry within rounding of the AdaClip bound
        assert max(abs(a - b) for a, b in zip(clipped, ref.clipped)) <= 1, t
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().cpu().double(), r, rtol=1e-5, atol=2e-6, msg=f"step {t}")


@pytest.mark.parametrize("make", [
    pytest.param(lambda ps: SPAM(ps, foreach=True, lr=1e-2, density=0.5, **SCHEDULE), id="SPAM-foreach"),
    pytest.param(lambda ps: SPAM(ps, fused=True, lr=1e-2, density=0.5, **SCHEDULE), id="SPAM-compiled"),
    pytest.param(lambda ps: SPAM(ps, fused=True, lr=1e-2, **SCHEDULE), id="SPAM-triton"),
    pytest.param(lambda ps: StableSPAM(ps, **HYPER), id="StableSPAM"),
    pytest.param(lambda ps: StableSPAM(ps, fused=True, **HYPER), id="StableSPAM-triton"),
])
def test_resume_on_cuda_is_bit_exact(make):
    stream = [_on(g) for g in _grad_stream(SHAPES, 60, seed=4)]
    whole = _params(DEVICE)
    opt = make(whole)
    for grads in stream:
        step_and_count(opt, whole, grads)

    head = _params(DEVICE)
    opt = make(head)
    for grads in stream[:27]:  # past the first reset (25) of SPAM's schedule
        step_and_count(opt, head, grads)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in head], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    tail = [nn.Parameter(t.clone()) for t in saved["params"]]
    resumed = make(tail)
    resumed.load_state_dict(saved["opt"])
    for grads in stream[27:]:
        step_and_count(resumed, tail, grads)
    for a, b in zip(whole, tail):
        assert torch.equal(a, b)


def test_compiled_step_on_cuda_follows_foreach_and_compiles_once(monkeypatch):
    """The compiled step (fused=True's fallback for what the Triton step does not take), made fused=True's
    kernel for every tensor here, under sparse momentum: new masks and state sizes at a reset, a new lr at
    every step, and still no recompile."""
    from torch._dynamo.utils import counters

    compiled_candidate = Candidate("compiled", spam_compiled, fused=True)
    others = tuple(c for c in SPAM.kernels.candidates(DEVICE) if not c.fused)
    monkeypatch.setattr(SPAM, "kernels", dataclasses.replace(
        SPAM.kernels, devices={**SPAM.kernels.devices, DEVICE.type: (compiled_candidate, *others)}))
    compiled, foreach = _params(DEVICE), _params(DEVICE)
    hyper = dict(lr=1e-2, density=0.5, weight_decay=0.1, **SCHEDULE)
    opts = SPAM(compiled, fused=True, **hyper), SPAM(foreach, foreach=True, **hyper)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)) for o in opts]
    stream = [_on(g) for g in _grad_stream(SHAPES, 80, seed=5)]
    graphs = None
    for t, grads in enumerate(stream, start=1):
        counts = [step_and_count(opt, ps, [g.clone() for g in grads])
                  for opt, ps in zip(opts, (compiled, foreach))]
        assert counts[0] == counts[1], t
        for sched in scheds:
            sched.step()
        if t == 30:  # past the first reset: new masks and state sizes, a new lr every step
            graphs = counters["stats"]["unique_graphs"]
            assert graphs > 0, "the fused path compiled nothing: this test would be vacuous"
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(compiled, foreach):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, hyper", [(SPAM, dict(lr=1e-2, weight_decay=0.1, **SCHEDULE)),
                                        (SPAM, dict(lr=1e-2, weight_decay=0.1, density=0.5, **SCHEDULE)),
                                        (StableSPAM, HYPER)], ids=["SPAM", "SPAM-sparse", "StableSPAM"])
def test_8bit_triton_step_on_cuda_follows_foreach(cls, hyper):
    """fused=True with 8-bit moments (the Triton kernels, a block per program) against the foreach step:
    equal counts; parameters within float32 rounding; codes apart by at most one step where the GPU's fused
    multiply-adds move a value across a rounding tie."""
    fused, foreach = _params(DEVICE), _params(DEVICE)
    opts = cls(fused, fused=True, state_bits=8, **hyper), cls(foreach, foreach=True, state_bits=8, **hyper)
    for t, grads in enumerate(_grad_stream(SHAPES, 60, seed=6), start=1):
        counts = [step_and_count(opt, ps, _on(grads)) for opt, ps in zip(opts, (fused, foreach))]
        assert counts[0] == counts[1], t
    for a, b in zip(fused, foreach):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        codes = [opt.state[p]["exp_avg"] for opt, p in zip(opts, (a, b))]
        if codes[0].dtype == torch.int8:
            assert (codes[0].int() - codes[1].int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls, layouts", LOW_PRECISION_LAYOUTS)
def test_low_precision_triton_steps_on_cuda_round_once_to_nearest_even(dtype, cls, layouts):
    assert_low_precision_steps_round_once_to_nearest_even(cls, dtype, layouts, DEVICE)
