"""The fused SPAM paths against the float64 transcription and the single-tensor reference path, plus the rules
that pick a path. On CPU ``fused`` is the C++ kernel; CUDA's Triton kernel (here in Triton's interpreter, on
CPU tensors) and torch.compile kernel are tested here too."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from reference_spam import ReferenceSPAM
from stepping import step_and_count
from torch import nn

from spam_opt.kernels.dispatch import Candidate
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.triton_kernel import spam_triton_with
from spam_opt.spam import SPAM
from spam_opt.state.kept import KeptEntries

SCHEDULE = dict(reset_interval=20, warmup_steps=6, clip_delay=4, threshold=50.0)
# 2-D, 1-D, 3-D and 0-dim parameters: every layout the fused path views as rows.
SHAPES = [(6, 5), (7,), (4, 3, 2), ()]


def _use_kernel(monkeypatch, name, kernel):
    """Make ``fused=True`` pick ``kernel`` (one of CUDA's) for CPU tensors too."""
    others = [c for c in SPAM.kernels.candidates(torch.device("cpu")) if not c.fused]
    fused = Candidate(name, kernel, fused=True)
    table = dataclasses.replace(SPAM.kernels, devices={**SPAM.kernels.devices, "cpu": (fused, *others)})
    monkeypatch.setattr(SPAM, "kernels", table)


def _use_compiled_kernel(monkeypatch):
    _use_kernel(monkeypatch, "compiled", spam_compiled)


@pytest.fixture(params=["cpp", "compile", "triton"])
def fused_kernel(request, monkeypatch):
    """Run a test through the C++ CPU kernel, then through CUDA's torch.compile kernel, then through CUDA's
    Triton kernel in Triton's interpreter (the layouts it does not take go to foreach here, to the compiled
    step on CUDA)."""
    if request.param == "compile":
        _use_compiled_kernel(monkeypatch)
    elif request.param == "triton":
        if torch.cuda.is_available():  # no interpreter there (conftest.py): tests/test_cuda.py runs it
            pytest.skip("Triton runs on the GPU on this machine: tests/test_cuda.py covers it")
        _use_kernel(monkeypatch, "Triton", spam_triton_with(spam_foreach))
    return request.param


def _stream(shapes, steps, seed=0):
    """Gradients with 1000x single-entry spikes, so that the clip fires on every path, and NaN/Inf
    entries at two steps."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(steps):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        if t % 9 == 8:
            grads[t % 3].view(-1)[t % 5] *= 1000.0
        if t == 13:
            grads[0][2] = float("nan")
        if t == 30:
            grads[2][1, 1] = float("inf")
        stream.append(grads)
    return stream


def _params(shapes, dtype=torch.float32):
    return [nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)).to(dtype))
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_fused_matches_float64_reference_including_resets_and_spike_counts(density, fused_kernel):
    params = _params(SHAPES)
    hyper = dict(lr=1e-2, weight_decay=0.1, density=density, seed=4, **SCHEDULE)
    opt = SPAM(params, fused=True, **hyper)
    ref = ReferenceSPAM([p.detach() for p in params], **hyper)
    total = skipped = 0
    for grads in _stream(SHAPES, 45):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        stats = opt.spike_stats()
        assert stats.clipped.tolist() == ref.clipped and stats.nonfinite.tolist() == ref.nonfinite
        total += sum(ref.clipped)
        skipped += sum(ref.nonfinite)
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().double(), r, rtol=2e-5, atol=2e-6)
    assert total >= 3, "the stream must exercise the clip"
    assert skipped == 2, "the stream must exercise the NaN/Inf skip"
    assert opt.state[params[0]]["reset_number"] == 2


def test_fused_matches_reference_path_on_nan_closed_gate_maximize_bf16_and_strided_sparse(fused_kernel):
    """Same inputs through the fused and the single-tensor path: equal counts, equal within fp32 rounding."""
    shapes = [(6, 5), (7,), (5, 6)]
    runs = {}
    for fused in (True, False):
        params = _params(shapes)
        params.append(nn.Parameter(torch.randn(8, 4, generator=torch.Generator().manual_seed(9)).bfloat16()))
        # a transposed (non-contiguous) parameter under sparse momentum
        params.append(nn.Parameter(torch.randn(6, 5, generator=torch.Generator().manual_seed(8)).t()))
        opt = SPAM(params, lr=1e-2, weight_decay=0.05, density=0.5, maximize=True,
                   foreach=None if fused else False, fused=fused or None, **SCHEDULE)
        gen = torch.Generator().manual_seed(3)
        counts, grads_seen = [], []
        for t in range(30):
            grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
            if t == 12:
                grads[0][2] = float("nan")  # a whole row: under density 0.5 some of it is kept
            if t == 17:
                grads[4][1, 1] = float("inf")
            if t % 7 == 6:
                grads[t % 5].view(-1)[0] *= 1000.0
            for p, g in zip(params, grads):
                p.grad = g.clone()
            gate = torch.tensor(t != 15)
            before = [p.detach().clone() for p in params]
            opt.step(gate=gate)
            stats = opt.spike_stats()
            counts.append((stats.clipped.tolist(), stats.nonfinite.tolist()))
            grads_seen.append(all(torch.allclose(p.grad, g, rtol=0, atol=0, equal_nan=True)
                                  for p, g in zip(params, grads)))
            if t == 15:
                assert all(torch.equal(p, b) for p, b in zip(params, before)), "closed gate moved a parameter"
            if t == 12:
                kept_in_row = [j - 10 for j in _kept(opt, params[0]) if 10 <= j < 15]
                assert kept_in_row and stats.nonfinite.tolist()[0] == 1
                assert torch.equal(params[0][2, kept_in_row], before[0][2, kept_in_row])
                assert not torch.equal(params[0][3], before[0][3])
        runs[fused] = ([p.detach().float() for p in params], counts, grads_seen)
    assert runs[True][1] == runs[False][1]
    assert sum(sum(c) for c, _ in runs[False][1]) >= 3
    assert all(runs[True][2]), "the fused path wrote into p.grad"
    for a, b in zip(runs[True][0], runs[False][0]):
        # bf16 parameters round to 8 bits after each step: one ulp of difference may persist
        tol = dict(rtol=1e-2, atol=1e-2) if a is runs[True][0][3] else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, b, **tol)
        assert torch.isfinite(a).all()


def _kept(opt, p):
    """Flat indices of the entries sparse momentum keeps for ``p``."""
    state = opt.state[p]
    return KeptEntries(state["kept_low"], state["kept_starts"]).indices().tolist()


def _train(params, opt, stream):
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("save_at", [19, 20])
def test_fused_resume_is_bit_exact_and_state_moves_between_paths(save_at, fused_kernel):
    hyper = dict(lr=1e-2, weight_decay=0.05, density=0.5, seed=2, **SCHEDULE)
    stream = _stream(SHAPES, 30, seed=1)
    full = _params(SHAPES)
    _train(full, SPAM(full, fused=True, **hyper), stream)

    head = _params(SHAPES)
    opt = SPAM(head, fused=True, **hyper)
    _train(head, opt, stream[:save_at])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in head], "opt": opt.state_dict()}, buffer)
    for foreach, fused in ((None, True), (True, None)):
        buffer.seek(0)
        ckpt = torch.load(buffer, weights_only=True)
        tail = [nn.Parameter(t.clone()) for t in ckpt["params"]]
        resumed = SPAM(tail, foreach=foreach, fused=fused, **hyper)
        resumed.load_state_dict(ckpt["opt"])
        _train(tail, resumed, stream[save_at:])
        for a, b in zip(full, tail):
            if fused:
                assert torch.equal(a, b)
            else:  # the foreach path rounds differently, nothing else
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_step_does_not_recompile_as_lr_warmup_counts_and_masks_change(monkeypatch):
    from torch._dynamo.utils import counters

    _use_compiled_kernel(monkeypatch)
    params = _params(SHAPES)
    opt = SPAM(params, fused=True, lr=1e-2, density=0.5, weight_decay=0.1, **SCHEDULE)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    stream = _stream(SHAPES, 50, seed=5)
    _train(params, opt, stream[:21])  # past the first reset: new masks, new state sizes
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "the fused path compiled nothing: this test would be vacuous"
    for grads in stream[21:]:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
    assert opt.global_step == 50 and opt.state[params[0]]["reset_number"] == 2
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("density", [1.0, 0.25, 1e-5])
def test_cpp_kernel_matches_reference_path_on_large_tensors(density, torch_threads):
    """Tensors of several work chunks (split over threads) and 4-way NaN checks; sparse gaps get the decay,
    and at density 1e-5 most 2**16-entry index blocks are empty."""
    shapes = [(300, 257), (70001,), (3,), (4, 100_000)]
    hyper = dict(lr=1e-2, weight_decay=0.1, density=density, reset_interval=8, warmup_steps=3, clip_delay=2)
    runs = []
    for fused in (True, False):
        params = _params(shapes)
        opt = SPAM(params, foreach=None if fused else False, fused=fused or None, **hyper)
        gen = torch.Generator().manual_seed(7)
        counts = []
        for t in range(20):
            grads = [torch.randn(s, generator=gen) for s in shapes]
            grads[t % 3].view(-1)[(t * 7919) % grads[t % 3].numel()::997] *= 1000.0
            grads[3][:, t::97] *= 1000.0
            if t == 9:
                grads[1][-1] = float("inf")  # in the last, partial vector of the C++ kernel
            if t == 11:
                grads[0].view(-1)[40_003:40_100:7] = float("nan")
                grads[3][2, 5_001] = -float("inf")
            counts.append(step_and_count(opt, params, grads))
        runs.append(([p.detach() for p in params], counts))
    assert runs[0][1] == runs[1][1]
    assert sum(c for step, _ in runs[1][1] for c in step) > 100
    assert runs[1][1][9][1] == [False, True, False, False]
    if density == 1.0:
        assert runs[1][1][11][1] == [True, False, False, True]
    for a, b in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
