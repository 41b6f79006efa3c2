"""StableSPAM against an independent float64 transcription of the rule, plus the torch.optim contract."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from stepping import step_and_count
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


def _grad_stream(shapes, steps, seed=0, spikes=((20, 0, 3), (55, 3, 7), (56, 0, 0), (80, 2, 1), (81, 1, 2))):
    """Gradients with a drifting scale and injected 1000x spikes on single entries at fixed steps."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(1, steps + 1):
        grads = [torch.randn(s, generator=gen) * (1 + 0.5 * torch.rand(1, generator=gen)) for s in shapes]
        for step, i, j in spikes:
            if step == t:
                grads[i].view(-1)[j] *= 1000.0
        stream.append(grads)
    return stream


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


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(12, 8), nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 12))


def _train(model, opt, steps, start=0):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 12, (16,), generator=gen) for _ in range(start + steps)][start:]
    for i, x in enumerate(batches):
        nn.functional.cross_entropy(model(x), x).backward()
        if (start + i) in (6, 21):  # spikes, to exercise AdaClip across the save point
            model[1].weight.grad[0, 0] *= 1000.0
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("save_at", [9, 10, 17])
def test_resume_is_bit_exact(save_at, path):
    """Save before a reset (9), on it (10), after it (17), mid-decay; continue; compare bitwise."""
    hyper = dict(lr=1e-2, weight_decay=0.05, reset_interval=10, total_steps=20, **path)
    model = _model()
    opt = StableSPAM(model.parameters(), **hyper)
    _train(model, opt, 30)

    model2 = _model()
    opt2 = StableSPAM(model2.parameters(), **hyper)
    _train(model2, opt2, save_at)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    model3 = _model()
    opt3 = StableSPAM(model3.parameters(), **hyper)
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    assert opt3.global_step == save_at
    _train(model3, opt3, 30 - save_at, start=save_at)
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_bf16_params_keep_float32_state_across_load_and_follow_fp32(path):
    init = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    p32, plow = nn.Parameter(init.clone()), nn.Parameter(init.to(torch.bfloat16))
    opts = [StableSPAM([p], lr=1e-2, **path) for p in (p32, plow)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        g = torch.randn(16, 8, generator=gen)
        for p, opt in zip((p32, plow), opts):
            p.grad = g.to(p.dtype)
            opt.step()
    torch.testing.assert_close(plow.float(), p32.detach(), rtol=5e-2, atol=3e-2)
    opt2 = StableSPAM([plow], **path)
    opt2.load_state_dict(copy.deepcopy(opts[1].state_dict()))
    for key, value in opts[1].state[plow].items():
        if torch.is_tensor(value):
            assert opt2.state[plow][key].dtype == torch.float32 and torch.equal(opt2.state[plow][key], value)


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
def test_closed_gate_skips_the_update_on_device(path):
    p = nn.Parameter(torch.randn(5, 5))
    opt = StableSPAM([p], **path)
    p.grad = torch.randn(5, 5)
    opt.step()
    snapshot = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    before = p.detach().clone()
    opt.step(gate=torch.tensor(False))
    assert torch.equal(p, before)
    for k, v in snapshot.items():
        assert torch.equal(opt.state[p][k], v), k
    opt.step(gate=torch.tensor(True))
    assert not torch.equal(p, before)


def test_closure_lr_scheduler_and_added_group():
    model = nn.Linear(3, 1)
    opt = StableSPAM(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(30):
        last = opt.step(closure).item()
        sched.step()
    assert last < first and opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 8)
    extra = nn.Parameter(torch.ones(2))
    opt.add_param_group({"params": [extra], "theta": 0.99})
    extra.grad = torch.ones(2)
    opt.step()
    assert not torch.equal(extra, torch.ones(2))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(gamma1=1.0), "gamma1"),
        (dict(gamma2=-0.1), "gamma2"),
        (dict(theta=1.5), "theta"),
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=10.5), "total_steps"),
        (dict(eta_min=2.0), "eta_min"),
        (dict(reset_interval=-1), "reset_interval"),
        (dict(foreach="yes"), "foreach"),
        (dict(foreach=True, fused=True), "foreach=True and fused=True"),
    ],
)
def test_invalid_hyperparameters_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StableSPAM([nn.Parameter(torch.zeros(2))], **kwargs)


def test_unknown_group_options_and_foreign_state_dicts_are_refused():
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        StableSPAM([{"params": [p], "threshold": 10}])
    adamw = torch.optim.AdamW([p])
    p.grad = torch.ones(3)
    adamw.step()
    with pytest.raises(ValueError, match="not written by StableSPAM"):
        StableSPAM([p]).load_state_dict(adamw.state_dict())


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


def test_kernel_flags_pick_the_paths_they_name():
    from spam_opt import _spam_cpu
    from spam_opt import _stable_spam_functional as F
    from spam_opt.stable_spam import _select_kernel

    cpu = torch.device("cpu")
    assert _select_kernel(None, None, cpu) is _spam_cpu.stable_spam_cpu
    assert _select_kernel(None, True, cpu) is _spam_cpu.stable_spam_cpu
    assert _select_kernel(None, False, cpu) is F.stable_spam_foreach  # fused=False is honoured
    assert _select_kernel(True, None, cpu) is F.stable_spam_foreach
    assert _select_kernel(False, None, cpu) is F.stable_spam_reference
    with pytest.raises(RuntimeError, match="fused=True cannot run.*CPU tensors only, got meta"):
        _select_kernel(None, True, torch.device("meta"))
