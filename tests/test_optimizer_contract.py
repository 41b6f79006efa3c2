"""The torch.optim contract, run over every optimizer of ``optimizer_db`` and every kernel path it has.

What each optimizer computes is tested against its own float64 oracle elsewhere; here: checkpoints resume
bit-exactly, param groups and schedulers behave as in torch, closures, gates, NaN/Inf gradients, dtypes, and
bad input gets an error that names the option.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optimizer_db import INFO_PATHS, INFOS
from torch import nn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(12, 8), nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 12))


def _train(model, opt, steps, start=0):
    """Steps of a tiny LM objective, with 1000x spikes on one entry (to exercise the clips across a save)."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 12, (16,), generator=gen) for _ in range(start + steps)][start:]
    for i, x in enumerate(batches):
        nn.functional.cross_entropy(model(x), x).backward()
        if (start + i) in (6, 13, 21, 40):
            model[1].weight.grad[0, 0] *= 1000.0
        opt.step()
        opt.zero_grad()


def _tensors(state):
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


@pytest.mark.parametrize(("info", "flags"), INFO_PATHS)
def test_resume_from_a_state_dict_is_bit_exact(info, flags):
    """Save around the schedule's resets, reload into a fresh model and optimizer, go on: bitwise equal."""
    total = 30
    model = _model()
    _train(model, info.make(model.parameters(), **info.schedule, **flags), total)
    for save_at in info.save_points:
        model2 = _model()
        opt2 = info.make(model2.parameters(), **info.schedule, **flags)
        _train(model2, opt2, save_at)
        buffer = io.BytesIO()
        torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buffer)
        buffer.seek(0)
        ckpt = torch.load(buffer, weights_only=True)
        model3 = _model()
        opt3 = info.make(model3.parameters(), **info.schedule, **flags)
        model3.load_state_dict(ckpt["model"])
        opt3.load_state_dict(ckpt["opt"])
        assert opt3.global_step == save_at
        _train(model3, opt3, total - save_at, start=save_at)
        for a, b in zip(model.parameters(), model3.parameters()):
            assert torch.equal(a, b), f"resumed at step {save_at}"


@pytest.mark.parametrize(("info", "flags"), INFO_PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_float32_state_and_follow_the_fp32_run(info, flags, dtype):
    init = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    p32, plow = nn.Parameter(init.clone()), nn.Parameter(init.to(dtype))
    opts = [info.make([p], lr=1e-2, **flags) for p in (p32, plow)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        g = torch.randn(16, 8, generator=gen)
        for p, opt in zip((p32, plow), opts):
            p.grad = g.to(p.dtype)
            opt.step()
    torch.testing.assert_close(plow.float(), p32.detach(), rtol=5e-2, atol=3e-2)
    assert not torch.equal(plow.float(), init.to(dtype).float())
    reloaded = info.make([plow], **flags)
    reloaded.load_state_dict(copy.deepcopy(opts[1].state_dict()))
    for key, value in _tensors(opts[1].state[plow]).items():
        loaded = reloaded.state[plow][key]
        assert loaded.dtype == value.dtype and torch.equal(loaded, value)
        if value.is_floating_point():
            assert value.dtype == torch.float32, key


@pytest.mark.parametrize(("info", "flags"), INFO_PATHS)
def test_closed_gate_skips_the_update_on_device(info, flags):
    p = nn.Parameter(torch.randn(5, 5))
    opt = info.make([p], **flags)
    p.grad = torch.randn(5, 5)
    opt.step()
    snapshot = {k: v.clone() for k, v in _tensors(opt.state[p]).items()}
    before = p.detach().clone()
    opt.step(gate=torch.tensor(False))
    assert torch.equal(p, before)
    for k, v in snapshot.items():
        assert torch.equal(opt.state[p][k], v), k
    assert opt.spike_stats().clipped.tolist() == [0]
    opt.step(gate=torch.tensor(True))
    assert not torch.equal(p, before)


@pytest.mark.parametrize(("info", "flags"), INFO_PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_gradient_poisons_nothing_and_is_flagged(info, flags, bad):
    """What a NaN/Inf entry leaves untouched differs (SPAM: that entry; Stable-SPAM: its tensor, whose norm
    AdaGN needs); everywhere it is flagged, the other parameters step, and nothing turns non-finite."""
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(6))
    opt = info.make([a, b], lr=1e-2, weight_decay=0.1, **flags)
    for _ in range(3):
        a.grad, b.grad = torch.randn(4, 4), torch.randn(6)
        opt.step()
    a_before, b_before = a.detach().clone(), b.detach().clone()
    a.grad = torch.randn(4, 4)
    a.grad[2, 1] = bad
    b.grad = torch.randn(6)
    opt.step()
    assert opt.spike_stats().nonfinite.tolist() == [1, 0]
    assert a[2, 1] == a_before[2, 1] and (b != b_before).all()
    for _ in range(2):  # the run goes on, finite
        a.grad, b.grad = torch.randn(4, 4), torch.randn(6)
        opt.step()
    for t in (a, b, *_tensors(opt.state[a]).values(), *_tensors(opt.state[b]).values()):
        if t.is_floating_point():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize(("info", "flags"), INFO_PATHS)
def test_grad_is_never_written_and_counts_come_per_parameter(info, flags):
    params = [nn.Parameter(torch.zeros(10, 10)), nn.Parameter(torch.zeros(7))]
    opt = info.make(params, **(info.schedule | dict(lr=1e-3)), **flags)
    gen = torch.Generator().manual_seed(0)
    for t in range(30):
        grads = [torch.randn(10, 10, generator=gen), torch.randn(7, generator=gen)]
        if t % 5 == 4:
            grads[0][1, 2] = 1e6
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    stats = opt.spike_stats()
    assert stats.params == params and stats.step == 30 and opt.global_step == 30
    assert stats.clipped.shape == stats.nonfinite.shape == (2,)


@pytest.mark.parametrize("info", INFOS)
def test_closure_and_params_without_grad(info):
    model = nn.Linear(3, 1)
    frozen = nn.Parameter(torch.ones(2))
    opt = info.make([{"params": model.parameters()}, {"params": [frozen], "lr": 0.5}], lr=1e-2)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(30):
        last = opt.step(closure).item()
    assert last < first
    assert torch.equal(frozen, torch.ones(2)) and len(opt.state[frozen]) == 0


@pytest.mark.parametrize("info", INFOS)
def test_an_added_param_group_joins_the_global_schedule(info):
    a = nn.Parameter(torch.randn(3, 3))
    opt = info.make([a], **info.schedule)
    interval = info.schedule["reset_interval"]
    for _ in range(interval - 3):
        a.grad = torch.randn(3, 3)
        opt.step()
    b = nn.Parameter(torch.randn(3, 3))
    opt.add_param_group({"params": [b], "lr": 1e-3, **info.group_option})
    for _ in range(2):
        a.grad, b.grad = torch.randn(3, 3), torch.randn(3, 3)
        opt.step()
    assert opt.state[b]["reset_number"] == 0 and opt.param_groups[1]["lr"] == 1e-3
    a.grad, b.grad = torch.randn(3, 3), torch.randn(3, 3)
    opt.step()  # the first reset step: both groups reset together
    assert opt.global_step == interval
    assert opt.state[a]["reset_number"] == opt.state[b]["reset_number"] == 1


@pytest.mark.parametrize("info", INFOS)
def test_spike_stats_report_each_groups_momentum_resets_at_their_steps(info):
    """A reset is an event of the step that makes it, per group, on the group's own interval; a parameter
    without a gradient at that step is reset at its next step with one."""
    a, b, c = (nn.Parameter(torch.randn(4, 4)) for _ in range(3))
    warmup = {"warmup_steps": 2} if "warmup_steps" in info.schedule else {}  # SPAM's must fit the interval
    groups = [{"params": [p], "reset_interval": n, **warmup} for p, n in ((a, 4), (b, 6), (c, 0))]
    options = {k: v for k, v in info.schedule.items() if k not in ("reset_interval", *warmup)}
    opt = info.make(groups, **options)
    seen = {}
    for s in range(1, 13):
        a.grad, c.grad = torch.randn(4, 4), torch.randn(4, 4)
        b.grad = None if s == 6 else torch.randn(4, 4)
        opt.step()
        seen[s] = [(r.group, r.number) for r in opt.spike_stats().resets]
        if s == 6:
            assert opt.state[b]["reset_number"] == 0  # no gradient: its reset waits for its next step
    expected = {4: [(0, 1)], 6: [(1, 1)], 8: [(0, 2)], 12: [(0, 3), (1, 2)]}
    assert {s: r for s, r in seen.items() if r} == expected
    assert opt.state[a]["reset_number"] == 3 and opt.state[b]["reset_number"] == 2
    assert opt.state[c]["reset_number"] == 0


@pytest.mark.parametrize("info", INFOS)
def test_a_state_dict_saved_before_an_option_existed_loads_with_its_default(info):
    p = nn.Parameter(torch.randn(4, 4))
    opt = info.make([p], lr=1e-2)
    p.grad = torch.randn(4, 4)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["maximize"]
    fresh = info.make([p], lr=1e-2)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["maximize"] is False
    p.grad = torch.randn(4, 4)
    fresh.step()


@pytest.mark.parametrize("info", INFOS)
def test_lr_scheduler_and_step_hooks(info):
    p = nn.Parameter(torch.randn(4))
    opt = info.make([p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    for _ in range(3):
        p.grad = torch.randn(4)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125) and calls == ["pre", "post"] * 3


@pytest.mark.parametrize("info", INFOS)
def test_invalid_hyperparameters_name_the_option(info):
    for options, match in info.bad_options:
        with pytest.raises(ValueError, match=match):
            info.make([nn.Parameter(torch.zeros(2))], **options)


@pytest.mark.parametrize("info", INFOS)
def test_unknown_or_invalid_group_options_are_refused(info):
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="unknown option.*'momentum_reset'"):
        info.make([{"params": [p], "momentum_reset": 10}])
    opt = info.make([p])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": -1.0})


@pytest.mark.parametrize("info", INFOS)
def test_foreign_or_corrupt_state_dicts_are_refused_with_a_clear_error(info):
    p = nn.Parameter(torch.zeros(3, 3))
    adamw = torch.optim.AdamW([p])
    p.grad = torch.ones(3, 3)
    adamw.step()
    opt = info.make([p])
    name = type(opt).__name__
    with pytest.raises(ValueError, match=f"not written by {name}"):
        opt.load_state_dict(adamw.state_dict())
    opt.step()
    sd = opt.state_dict()
    del sd["state"][0]["exp_avg_sq"]
    with pytest.raises(ValueError, match=f"corrupt {name} state"):
        info.make([p]).load_state_dict(sd)
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        info.make([p]).load_state_dict({"weights": 1})


@pytest.mark.parametrize("info", INFOS)
def test_sparse_gradients_are_refused(info):
    emb = nn.Embedding(10, 4, sparse=True)
    opt = info.make(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
