"""SpikeGuard: the skip/scale decision against a float64 rolling z-score, with gated and plain optimizers."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
from torch import nn

from spam_opt.spam import SPAM
from spam_opt.spike_guard import SpikeGuard, global_grad_norm
from spam_opt.stable_spam import StableSPAM

OPTIMIZERS = {
    "spam": lambda ps: SPAM(ps, lr=1e-2, foreach=False),
    "stable-spam": lambda ps: StableSPAM(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
}


def _params():
    gen = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(8, 4, generator=gen)), nn.Parameter(torch.randn(5, generator=gen))]


def _grads(step, scale=1.0):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(8, 4, generator=gen) * scale, torch.randn(5, generator=gen) * scale]


def _set(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def _state_snapshot(opt, params):
    return [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_spike_is_skipped_bitwise_and_the_run_continues(name):
    params = _params()
    opt = OPTIMIZERS[name](params)
    guard = SpikeGuard(opt, sigma=6.0, window=16, min_history=5)
    for t in range(12):
        _set(params, _grads(t))
        guard.step(loss=torch.tensor(2.0 - 0.01 * t))
        guard.zero_grad()
    assert guard.num_skipped == 0
    before, state = [p.detach().clone() for p in params], _state_snapshot(opt, params)
    _set(params, _grads(12, scale=100.0))  # a gradient-norm spike
    guard.step(loss=torch.tensor(1.88))
    assert guard.num_skipped == 1 and bool(guard.last_skipped)
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    for p, saved in zip(params, state):
        for k, v in saved.items():
            if k != "step" or name != "adamw":  # AdamW's host-side step count is documented to advance
                assert torch.equal(opt.state[p][k], v), k
    _set(params, _grads(13))
    guard.step(loss=torch.tensor(1.87))
    assert guard.num_skipped == 1 and not any(torch.equal(p, b) for p, b in zip(params, before))


def test_loss_spike_alone_is_skipped():
    params = _params()
    guard = SpikeGuard(StableSPAM(params, lr=1e-2), window=32, min_history=10)
    gen = torch.Generator().manual_seed(5)
    for t in range(20):
        _set(params, _grads(t))
        guard.step(loss=2.0 + 0.05 * torch.randn((), generator=gen))
    before = [p.detach().clone() for p in params]
    _set(params, _grads(20))
    guard.step(loss=torch.tensor(50.0))
    assert guard.num_skipped == 1 and all(torch.equal(p, b) for p, b in zip(params, before))


def test_not_skipped_before_min_history_but_nonfinite_always_is():
    params = _params()
    guard = SpikeGuard(torch.optim.AdamW(params, lr=1e-2), window=16, min_history=8)
    for t in range(7):
        _set(params, _grads(t, scale=1000.0 if t == 6 else 1.0))
        guard.step()
    assert guard.num_skipped == 0  # step 7 spiked, with only 6 values of history
    before = [p.detach().clone() for p in params]
    grads = _grads(7)
    grads[1][2] = float("nan")
    _set(params, grads)
    guard.step()
    assert guard.num_skipped == 1 and all(torch.equal(p, b) for p, b in zip(params, before))
    for state in guard.optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values())


def test_decision_matches_a_float64_rolling_z_score():
    """Over a long noisy stream with spikes, the guard skips exactly where a plain float64 window says so
    (spikes enter that window winsorised at the bound, as the guard records them)."""
    params = _params()
    guard = SpikeGuard(torch.optim.SGD(params, lr=1e-3), sigma=3.0, window=10, min_history=4)
    gen = torch.Generator().manual_seed(3)
    history: list[float] = []
    expected, got = [], []
    for t in range(60):
        scale = float(1 + 0.3 * torch.rand((), generator=gen)) * (8.0 if t in (9, 25, 26, 44) else 1.0)
        grads = _grads(t, scale)
        norm = float(torch.cat([g.reshape(-1) for g in grads]).double().norm())
        window = history[-10:]
        bound = statistics.mean(window) + 3.0 * statistics.stdev(window) if len(window) >= 2 else math.inf
        spike = len(history) >= 4 and norm > bound
        expected.append(spike)
        history.append(bound if spike else norm)  # a spike is recorded at the bound it broke
        _set(params, grads)
        guard.step()
        got.append(bool(guard.last_skipped))
    assert got == expected and sum(expected) >= 3


def test_scale_action_shrinks_the_update_by_sigma_over_z():
    params = [nn.Parameter(torch.zeros(4))]
    guard = SpikeGuard(torch.optim.SGD(params, lr=1.0), sigma=2.0, window=8, min_history=4, action="scale")
    norms = [1.0, 1.2, 0.8, 1.0, 1.1, 0.9]
    for n in norms:
        params[0].grad = torch.full((4,), n / 2)  # norm n
        guard.step()
    assert guard.num_skipped == 0
    before = params[0].detach().clone()
    params[0].grad = torch.full((4,), 5.0)  # norm 10
    guard.step()
    mean, std = statistics.mean(norms), statistics.stdev(norms)
    factor = 2.0 * std / (10.0 - mean)
    torch.testing.assert_close(params[0].detach() - before, torch.full((4,), -5.0 * factor))
    assert guard.num_skipped == 1


def test_scale_action_with_a_gated_optimizer_still_skips_nonfinite():
    params = _params()
    guard = SpikeGuard(StableSPAM(params), action="scale", min_history=2, window=4)
    _set(params, _grads(0))
    guard.step()
    before = [p.detach().clone() for p in params]
    grads = _grads(1)
    grads[0][0, 0] = float("inf")
    _set(params, grads)
    guard.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and guard.num_skipped == 1


def test_guard_step_never_syncs_with_the_host(monkeypatch):
    """Every way Python code can read a tensor's value on the host raises inside guard.step."""
    runs = []
    for make in (lambda ps: StableSPAM(ps, foreach=True), lambda ps: StableSPAM(ps, foreach=False),
                 lambda ps: SPAM(ps, foreach=False), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)):
        params = _params()
        runs.append((params, SpikeGuard(make(params), window=8, min_history=3)))

    def host_read(*_):
        raise AssertionError("host sync inside guard.step")

    with monkeypatch.context() as m:
        for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
            m.setattr(torch.Tensor, attr, host_read)
        for params, guard in runs:
            for t in range(6):
                _set(params, _grads(t, 50.0 if t == 5 else 1.0))
                guard.step(loss=torch.tensor(1.0 + 0.1 * t))
    assert all(guard.num_skipped == 1 for _, guard in runs)


def test_state_dict_round_trip_continues_identically():
    def run(guard, params, steps):
        for t in steps:
            _set(params, _grads(t, 30.0 if t in (14, 24) else 1.0))
            guard.step(loss=torch.tensor(float(t % 3)))

    params = _params()
    guard = SpikeGuard(StableSPAM(params), window=8, min_history=4)
    run(guard, params, range(25))

    params2 = _params()
    guard2 = SpikeGuard(StableSPAM(params2), window=8, min_history=4)
    run(guard2, params2, range(12))
    saved = copy.deepcopy((guard2.state_dict(), guard2.optimizer.state_dict()))
    params3 = _params()
    for p, q in zip(params3, params2):
        p.data.copy_(q)
    guard3 = SpikeGuard(StableSPAM(params3), window=8, min_history=4)
    guard3.load_state_dict(saved[0])
    guard3.optimizer.load_state_dict(saved[1])
    run(guard3, params3, range(12, 25))
    assert guard3.num_skipped == guard.num_skipped == 2
    assert all(torch.equal(a, b) for a, b in zip(params, params3))
    with pytest.raises(ValueError, match="window"):
        SpikeGuard(StableSPAM(_params()), window=16).load_state_dict(saved[0])


def test_accelerated_optimizer_acts_on_sync_steps_only():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = nn.Linear(4, 2)
    model, opt = accelerator.prepare(model, StableSPAM(model.parameters(), lr=1e-2))
    guard = SpikeGuard(opt, window=8, min_history=3)
    steps_before = opt.optimizer.global_step
    for _ in range(8):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.randn(3, 4)).square().mean())
            guard.step()
            guard.zero_grad()
    assert opt.optimizer.global_step - steps_before == 4  # 8 micro-batches, 2 per optimizer step
    assert int(guard._norm.count) == 4


def test_global_grad_norm_and_bad_arguments():
    grads = [torch.randn(3, 3), torch.randn(4, dtype=torch.bfloat16)]
    expected = torch.cat([g.double().reshape(-1) for g in grads]).norm()
    torch.testing.assert_close(global_grad_norm(grads).double(), expected, rtol=1e-6, atol=0)
    opt = torch.optim.SGD(_params(), lr=0.1)
    for kwargs, name in [(dict(sigma=0.0), "sigma"), (dict(window=1), "window"),
                         (dict(min_history=200), "min_history"), (dict(action="clip"), "action")]:
        with pytest.raises(ValueError, match=name):
            SpikeGuard(opt, **kwargs)
    with pytest.raises(ValueError, match="Optimizer"):
        SpikeGuard(object())
    guard = SpikeGuard(opt)
    for p in guard.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="scalar loss"):
        guard.step(loss=torch.ones(3))


def test_every_step_of_a_burst_is_skipped_and_a_lasting_rise_is_accepted_in_time():
    params = _params()
    guard = SpikeGuard(torch.optim.SGD(params, lr=1e-3), sigma=6.0, window=32, min_history=8)
    gen = torch.Generator().manual_seed(5)
    skipped = []
    for t in range(200):
        noise = float(1 + 0.1 * torch.rand((), generator=gen))
        level = 1000.0 if 40 <= t < 45 else (3.0 if t >= 100 else 1.0)  # a 5-step burst, then a lasting x3
        _set(params, _grads(t, noise * level))
        guard.step()
        skipped.append(bool(guard.last_skipped))
    assert skipped[40:45] == [True] * 5, "a recorded spike must not let the rest of the burst through"
    assert not any(skipped[45:100])
    assert skipped[100], "the first step of the new level is a spike"
    assert not any(skipped[170:]), "a lasting rise must be accepted eventually, not skipped forever"
