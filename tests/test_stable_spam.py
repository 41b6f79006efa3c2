"""StableSPAM against an independent float64 transcription of the rule, plus the torch.optim contract."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from stepping import grad_stream, step_and_count
from torch import nn

from spam_opt.stable_spam import StableSPAM

PATHS = [pytest.param(dict(foreach=False), id="reference"), pytest.param(dict(foreach=True), id="foreach"),
         pytest.param(dict(fused=True), id="fused")]


class Float64StableSPAM:
    """The design's Stable-SPAM in float64, in the authors' order of operations, moments zeroed before use."""

    def __init__(self, params, lr, betas, eps, weight_decay, gamma1, gamma2, theta, total_steps, eta_min,
                 reset_interval):
        self.p = [t.double().clone() for t in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.g1, self.g2, self.theta, self.T, self.eta_min = gamma1, gamma2, theta, total_steps, eta_min
        self.interval = reset_interval
        self.s = 0
        self.state = [dict(n=0, m=torch.zeros_like(t), v=torch.zeros_like(t), a=0.0, mn=0.0, vn=0.0)
                      for t in self.p]
        self.clipped: list[int] = []

    def step(self, grads):
        self.s += 1
        t = min(self.s, self.T + 1)
        decay = self.eta_min + (1 - self.eta_min) * (1 + math.cos(math.pi * t / (self.T + 1))) / 2
        b1, g1 = self.b1 * decay, self.g1 * decay
        self.clipped = []
        for i, grad in enumerate(grads):
            st, g = self.state[i], grad.double().clone()
            self.p[i] *= 1 - self.lr * self.wd
            st["n"] += 1
            gmax = g.abs().max().item()
            st["a"] = self.theta * st["a"] + (1 - self.theta) * gmax
            a_hat = st["a"] / (1 - self.theta ** st["n"])
            mask = g.abs() > a_hat
            self.clipped.append(int(mask.sum()))
            g[mask] = g[mask] / gmax * a_hat
            norm = g.norm().item()
            st["mn"] = g1 * st["mn"] + (1 - g1) * norm
            st["vn"] = self.g2 * st["vn"] + (1 - self.g2) * norm**2
            c = (st["mn"] / (1 - g1 ** st["n"])) / (math.sqrt(st["vn"] / (1 - self.g2 ** st["n"])) + self.eps)
            if norm > 0:
                g = g / norm * c
            if self.interval and self.s % self.interval == 0:
                st["m"], st["v"], st["n"] = torch.zeros_like(g), torch.zeros_like(g), 1
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
            denom = st["v"].sqrt() / math.sqrt(1 - self.b2 ** st["n"]) + self.eps
            self.p[i] -= self.lr / (1 - b1 ** st["n"]) * st["m"] / denom


HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, gamma1=0.7, gamma2=0.9, theta=0.999,
             total_steps=90, eta_min=0.5, reset_interval=40)


_grad_stream = functools.partial(grad_stream,
                                 spikes=((20, 0, 3), (55, 3, 7), (56, 0, 0), (80, 2, 1), (81, 1, 2)))


@pytest.mark.parametrize("path", PATHS)
def test_matches_float64_reference_over_120_steps_with_spikes(path):
    shapes = [(6, 5), (7,), (4, 3, 2), (9, 4)]
    init = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    params = [nn.Parameter(t.clone()) for t in init]
    opt = StableSPAM(params, **path, **HYPER)
    ref = Float64StableSPAM(init, **HYPER)
    spiked_steps_clipped = 0
    for t, grads in enumerate(_grad_stream(shapes, 120), start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        # float32 and float64 may disagree on an entry within rounding of the AdaClip bound; spikes may not.
        assert (opt.spike_stats().clipped - torch.tensor(ref.clipped)).abs().max() <= 1, t
        if t in (20, 55, 56, 80, 81):
            spiked_steps_clipped += sum(ref.clipped) > 0
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=2e-6, msg=f"step {t}")
    assert spiked_steps_clipped == 5, "every injected spike must be scaled by AdaClip"


@pytest.mark.parametrize("path", PATHS)
def test_maximize_is_the_float64_rule_on_the_negated_gradient(path):
    """maximize=True on g ascends: it follows the float64 oracle fed -g, and is bit for bit maximize=False
    fed -g (AdaClip and AdaGN see only |g| and norms); the gradients it reads are left as they were."""
    shapes = [(6, 5), (7,), (4, 3, 2), (9, 4)]
    init = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    up, down = [nn.Parameter(t.clone()) for t in init], [nn.Parameter(t.clone()) for t in init]
    opt_up = StableSPAM(up, maximize=True, **path, **HYPER)
    opt_down = StableSPAM(down, **path, **HYPER)
    ref = Float64StableSPAM(init, **HYPER)
    for t, grads in enumerate(_grad_stream(shapes, 60), start=1):  # a reset at step 40, spikes at 20 and 55
        for p, q, g in zip(up, down, grads):
            p.grad, q.grad = g.clone(), -g
        opt_up.step()
        opt_down.step()
        ref.step([-g for g in grads])
        assert all(torch.equal(p.grad, g) for p, g in zip(up, grads))
        assert torch.equal(opt_up.spike_stats().clipped, opt_down.spike_stats().clipped)
        for p, q, r in zip(up, down, ref.p):
            assert torch.equal(p, q), f"step {t}"
            torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=2e-6, msg=f"step {t}")


def test_adaclip_scales_exactly_the_spiked_entry_and_never_writes_grad():
    p = nn.Parameter(torch.zeros(50))
    opt = StableSPAM([p], lr=1e-3, reset_interval=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        p.grad = torch.randn(50, generator=gen).clamp(-2, 2)
        opt.step()
    g = torch.randn(50, generator=gen).clamp(-2, 2)
    g[7] = 1e4
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    assert opt.spike_stats().clipped.tolist() == [1]


@pytest.mark.parametrize("path", PATHS)
def test_momentum_reset_zeroes_moments_before_they_are_used(path):
    """On a reset step the update is Adam's first step, lr * g / |g| per entry: the old moments play no part.

    The authors' code would apply the old moments with a restarted bias correction instead (a step of the
    other sign here, since the old momentum points the other way)."""
    p = nn.Parameter(torch.zeros(20))
    lr = 1e-2
    opt = StableSPAM([p], lr=lr, reset_interval=10, **path)
    gen = torch.Generator().manual_seed(0)
    for _ in range(9):
        p.grad = torch.rand(20, generator=gen) + 0.5  # old momentum: all positive
        opt.step()
    assert opt.state[p]["step"].item() == 9
    before = p.detach().clone()
    p.grad = -(torch.rand(20, generator=gen) + 0.5)  # step 10, a reset step: gradient all negative
    opt.step()
    torch.testing.assert_close(p.detach() - before, torch.full((20,), lr), rtol=1e-5, atol=0)
    assert opt.state[p]["step"].item() == 1  # the count restarts: a short warm-up after each reset
    p.grad = torch.rand(20, generator=gen) + 0.5
    opt.step()
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_leaves_that_parameter_and_its_state_untouched(path, bad):
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(6))
    opt = StableSPAM([a, b], lr=1e-2, **path)
    for _ in range(3):
        a.grad, b.grad = torch.randn(4, 4), torch.randn(6)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[a].items() if torch.is_tensor(v)}
    a_before, b_before = a.detach().clone(), b.detach().clone()
    a.grad = torch.randn(4, 4)
    a.grad[2, 1] = bad
    b.grad = torch.randn(6)
    opt.step()
    assert torch.equal(a, a_before)
    for k, v in before.items():
        assert torch.equal(opt.state[a][k], v), k
    assert not torch.equal(b, b_before)
    assert opt.spike_stats().nonfinite.tolist() == [1, 0]
    a.grad, b.grad = torch.randn(4, 4), torch.randn(6)
    opt.step()  # the run goes on, finite
    for t in (a, b, *opt.state[a].values(), *opt.state[b].values()):
        if torch.is_tensor(t):
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state_bits", [32, 8])
def test_a_nonfinite_gradient_at_the_first_step_or_a_reset_leaves_the_parameter_as_it_was(path, state_bits):
    """Where the tensor's count is 0 (its first step, a reset step), skipping it must not divide by a zero
    bias correction: the foreach step once turned such a parameter into NaN."""
    p = nn.Parameter(torch.randn(4, 64))
    opt = StableSPAM([p], lr=1e-2, reset_interval=3, state_bits=state_bits, **path)
    for t in range(1, 6):  # NaN at step 1, and at step 4, the first after the reset at step 3
        before = p.detach().clone()
        p.grad = torch.randn(4, 64)
        if t in (1, 4):
            p.grad[1, 2] = float("nan")
        opt.step()
        assert torch.isfinite(p).all(), t
        assert torch.equal(p, before) == (t in (1, 4)), t


def test_fused_matches_foreach_on_large_tensors_with_resets_and_nan(torch_threads):
    """Tensors of several work chunks, split over threads: the C++ reductions against torch's."""
    shapes = [(300, 257), (70001,), (3,)]
    runs = []
    for path in (dict(fused=True), dict(foreach=True)):
        params = [nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
                  for i, s in enumerate(shapes)]
        opt = StableSPAM(params, lr=1e-2, weight_decay=0.1, reset_interval=7, total_steps=20, **path)
        gen = torch.Generator().manual_seed(3)
        counts = []
        for t in range(20):
            grads = [torch.randn(s, generator=gen) for s in shapes]
            grads[t % 3].view(-1)[(t * 7919) % grads[t % 3].numel()] *= 1000.0
            if t == 9:
                grads[1][-1] = float("nan")
            counts.append(step_and_count(opt, params, grads))
        runs.append(([p.detach() for p in params], counts))
    assert runs[0][1] == runs[1][1]
    assert runs[1][1][9][1] == [False, True, False]
    for a, b in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
