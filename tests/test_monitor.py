"""GradientSpikeMonitor and SpikeInjector against float64 references computed here, plus their contracts."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from spam_opt.monitor import GradientSpikeMonitor, SpikeInjector
from spam_opt.monitor.jsonl import read_jsonl
from spam_opt.spam import SPAM
from spam_opt.stable_spam import StableSPAM

SPIKE_STEP, SPIKED = 60, "1.weight"  # a LayerNorm weight, where the paper saw most spikes
# 1000x at step 60 scores 1000 * 60 / (59 + 1000) = 57 > 50; at step 40 the running mean would hide it


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only contend


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


def _grads(model: nn.Module, steps: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Float64 gradients per step with a drifting scale; one 1000x spike on the LayerNorm weight."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(1, steps + 1):
        scale = 1.0 + 0.5 * math.sin(t / 5)
        grads = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
                 for n, p in model.named_parameters()}
        if t == SPIKE_STEP:
            grads[SPIKED] = grads[SPIKED] * 1000
        stream.append(grads)
    return stream


def _feed(monitor: GradientSpikeMonitor, model: nn.Module, stream, losses=None) -> None:
    params = dict(model.named_parameters())
    for t, grads in enumerate(stream, start=1):
        for n, g in grads.items():
            params[n].grad = g.to(torch.float32)
        loss = None if losses is None else torch.tensor(losses[t - 1])
        monitor.observe(t, loss=loss)
    monitor.close()


def _recorded(value: float, earlier: float, t: int, threshold: float) -> float:
    """What a value adds to its running sum: itself, or if it scores above the threshold, the value that
    would have scored the threshold exactly: v t / (earlier + v) = threshold."""
    return threshold * earlier / (t - threshold) if value * t / (earlier + value) > threshold else value


def _reference_tensor_scores(stream, threshold: float = 50.0) -> list[dict[str, float]]:
    """The paper's GSS applied to ‖g‖ and max|g|: value / mean over steps so far (current included); a spike
    enters the mean at the bound it broke."""
    sums: dict[str, list[float]] = {}
    out = []
    for t, grads in enumerate(stream, start=1):
        row = {}
        for n, g in grads.items():
            s = sums.setdefault(n, [0.0, 0.0])
            scores = []
            for k, value in enumerate((float(g.norm()), float(g.abs().max()))):
                scores.append(value * t / (s[k] + value))
                s[k] += _recorded(value, s[k], t, threshold)
            row[n] = max(scores)
        out.append(row)
    return out


def _reference_element_scores(stream, threshold: float) -> list[dict[str, tuple[float, int]]]:
    sums: dict[str, torch.Tensor] = {}
    out = []
    for t, grads in enumerate(stream, start=1):
        row = {}
        for n, g in grads.items():
            earlier = sums.get(n, torch.zeros_like(g))
            gss = g.abs() * t / (earlier + g.abs())
            bound = threshold * earlier / (t - threshold) if t > threshold else g.abs()
            sums[n] = earlier + torch.where(gss > threshold, bound, g.abs())
            row[n] = (float(gss.max()), int((gss > threshold).sum()))
        out.append(row)
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensor_mode_scores_events_and_norms_match_float64_reference(tmp_path):
    model = _model()
    stream = _grads(model, 65)
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=7)
    _feed(monitor, model, stream)
    ref = _reference_tensor_scores(stream)
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [7, 14, 21, 28, 35, 42, 49, 56, 63, 65]  # 65: logged by close()
    start = 0
    for r in rows:
        interval = ref[start:r["step"]]
        for name, score in r["grad_score"].items():
            assert score == pytest.approx(max(s[name] for s in interval), rel=1e-3)
        norm = math.sqrt(sum(float(g.square().sum()) for g in stream[r["step"] - 1].values()))
        assert r["grad_norm"] == pytest.approx(norm, rel=1e-5)
        start = r["step"]
    events = _rows(tmp_path / "spikes.jsonl")
    expected = {(t, n) for t, row in enumerate(ref, start=1) for n, s in row.items() if s > 50}
    assert expected == {(SPIKE_STEP, SPIKED)}  # the stream is built so that only the injected spike counts
    assert {(e["step"], e["param"]) for e in events} == expected
    (event,) = events
    assert event["kind"] in ("grad_norm", "grad_max")
    assert event["score"] == pytest.approx(ref[SPIKE_STEP - 1][SPIKED], rel=1e-5)
    g = stream[SPIKE_STEP - 1][SPIKED]
    assert event["value"] == pytest.approx(float(g.norm() if event["kind"] == "grad_norm" else g.abs().max()),
                                           rel=1e-5)
    assert next(r for r in rows if r["step"] == 63)["spikes"] == 1


def test_element_mode_matches_float64_elementwise_gss(tmp_path):
    model = _model()
    stream = _grads(model, 65)
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, mode="element", gss_threshold=20.0, log_every=5)
    _feed(monitor, model, stream)
    ref = _reference_element_scores(stream, 20.0)
    expected = {(t, n): v for t, row in enumerate(ref, start=1) for n, v in row.items() if v[0] > 20.0}
    events = {(e["step"], e["param"]): e for e in _rows(tmp_path / "spikes.jsonl")}
    assert (SPIKE_STEP, SPIKED) in expected and events.keys() == expected.keys()
    for key, (score, count) in expected.items():
        assert events[key]["kind"] == "element_gss"
        assert events[key]["score"] == pytest.approx(score, rel=1e-4)
        assert events[key]["value"] == count
    for r in _rows(tmp_path / "metrics.jsonl"):
        for name, score in r["grad_score"].items():
            assert score == pytest.approx(max(s[name][0] for s in ref[r["step"] - 5:r["step"]]), rel=1e-3)


def test_loss_spikes_against_rolling_mean_and_deviation(tmp_path):
    model = _model()
    stream = _grads(model, 30, seed=3)
    gen = torch.Generator().manual_seed(4)
    losses = (3.0 + 0.1 * torch.randn(30, generator=gen, dtype=torch.float64)).tolist()
    losses[24] = 9.0  # step 25
    losses[27] = float("nan")  # step 28
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=10, loss_window=16)
    _feed(monitor, model, stream, losses=losses)
    loss_events = [e for e in _rows(tmp_path / "spikes.jsonl") if e["param"] == "loss"]
    window = [x for x in losses[:24]][-16:]
    z = (9.0 - statistics.fmean(window)) / statistics.stdev(window)  # the sample deviation, as the guard's
    assert [(e["step"], e["kind"]) for e in loss_events] == [(25, "loss"), (28, "nonfinite")]
    # the rule runs in float32 on the losses' device: its z matches float64 to float32 rounding
    assert loss_events[0]["score"] == pytest.approx(z, rel=1e-4) and loss_events[0]["value"] == 9.0
    rows = _rows(tmp_path / "metrics.jsonl")
    assert rows[1]["step"] == 20 and rows[1]["loss"] == pytest.approx(losses[19])
    assert rows[2]["spikes"] == 1 and rows[2]["nonfinite"] == 1


class _CountingSyncs:
    """Counts the Tensor methods that copy a value to the host (each one a device sync on an accelerator)."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _name=name, _original=original, **k):
                self.calls.append(_name)
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_no_host_transfer_between_logging_steps(tmp_path, monkeypatch):
    model = _model()
    stream = _grads(model, 8)
    params = dict(model.named_parameters())
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=4, mode="element")
    syncs = _CountingSyncs(monkeypatch)
    for t, grads in enumerate(stream, start=1):
        for n, g in grads.items():
            params[n].grad = g.float()
        syncs.calls.clear()
        monitor.observe(t, loss=torch.tensor(1.0), scalars={"lr": torch.tensor(0.1), "tokens_per_s": 5.0})
        assert syncs.calls == ([] if t % 4 else ["tolist"]), t  # one batched transfer per logging step
    monkeypatch.undo()
    assert [r["lr"] for r in _rows(tmp_path / "metrics.jsonl")] == [pytest.approx(0.1)] * 2


def test_spam_clip_counts_and_momentum_resets_are_recorded(tmp_path):
    model = _model()
    opt = SPAM(model.parameters(), lr=1e-2, threshold=5.0, reset_interval=12, warmup_steps=3, clip_delay=2)
    monitor = GradientSpikeMonitor(model, opt, run_dir=tmp_path, log_every=5)
    gen = torch.Generator().manual_seed(5)
    expected: dict[tuple[int, str], int] = {}
    names = [n for n, _ in model.named_parameters()]
    for t in range(1, 31):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * (10.0 if t % 7 == 0 else 1.0)
        monitor.observe(t)
        opt.step()
        for n, c in zip(names, opt.spike_stats().clipped.tolist()):  # read directly, every step
            if c:
                expected[(t, n)] = c
    monitor.close()
    events = _rows(tmp_path / "spikes.jsonl")
    clips = {(e["step"], e["param"]): e["value"] for e in events if e["kind"] == "clip"}
    assert expected and clips == expected
    numel = dict((n, p.numel()) for n, p in model.named_parameters())
    assert all(e["score"] == e["value"] / numel[e["param"]] for e in events if e["kind"] == "clip")
    resets = [(e["step"], e["param"], e["value"]) for e in events if e["kind"] == "momentum_reset"]
    assert resets == [(12, "*", 1), (24, "*", 2)]
    # a row counts the optimizer steps before it: step 30's clips happen after the last row, at step 30
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    before = [sum(c for (t, _), c in expected.items() if r["step"] - 5 <= t < r["step"]) for r in rows]
    assert [r["clipped"] for r in rows] == before


def test_momentum_resets_are_read_from_the_optimizer_per_named_group(tmp_path):
    model = _model()
    weights = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = StableSPAM([{"params": weights, "name": "matrices", "reset_interval": 3},
                      {"params": others, "name": "vectors", "reset_interval": 5}], lr=1e-3)
    monitor = GradientSpikeMonitor(model, opt, run_dir=tmp_path, log_every=4)
    for t in range(1, 16):
        for p in model.parameters():
            p.grad = torch.randn(p.shape)
        monitor.observe(t)
        opt.step()
    monitor.close()
    resets = [(e["step"], e["param"], e["value"]) for e in _rows(tmp_path / "spikes.jsonl")
              if e["kind"] == "momentum_reset"]
    assert resets == [(3, "matrices", 1), (5, "vectors", 1), (6, "matrices", 2), (9, "matrices", 3),
                      (10, "vectors", 2), (12, "matrices", 4), (15, "*", 5)]


def test_nonfinite_gradients_are_events_and_json_stays_valid(tmp_path, caplog):
    model = _model()
    stream = _grads(model, 10)
    stream[5]["0.bias"][0] = float("inf")
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=10)
    with caplog.at_level(logging.WARNING, logger="spam_opt.monitor"):
        _feed(monitor, model, stream)
    events = _rows(tmp_path / "spikes.jsonl")
    assert [(e["step"], e["param"], e["kind"]) for e in events] == [(6, "0.bias", "nonfinite")]
    assert "non-finite" in caplog.text and "0.bias" in caplog.text
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, readable by any tool


def test_injector_scales_only_matching_gradients_at_chosen_steps():
    model = _model()
    injector = SpikeInjector(model, steps=[3, 5], factor=100.0, param_pattern=r"^1\.")
    assert injector.names == ["1.weight", "1.bias"]
    for step in range(1, 7):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        assert injector.apply(step) == (step in (3, 5))
        for n, p in model.named_parameters():
            hit = step in (3, 5) and n.startswith("1.")
            assert torch.equal(p.grad, torch.full_like(p, 100.0 if hit else 1.0)), (step, n)


def test_injector_with_a_fraction_hits_that_share_of_entries_and_repeats_itself():
    model = nn.Linear(200, 100)
    runs = []
    for _ in range(2):
        injector = SpikeInjector(model, steps=[4], factor=1000.0, param_pattern="weight", fraction=0.01,
                                 seed=7)
        model.weight.grad, model.bias.grad = torch.ones(100, 200), torch.ones(100)
        assert injector.apply(4)
        runs.append(model.weight.grad.clone())
        assert torch.equal(model.bias.grad, torch.ones(100))
    hit = runs[0] == 1000.0
    assert torch.equal(runs[0], runs[1]) and ((runs[0] == 1.0) | hit).all()
    assert 120 <= int(hit.sum()) <= 280  # 1% of 20000 entries, within a few standard deviations


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(steps=[0]), "steps"),
    (dict(steps=[1], fraction=0.0), "fraction"),
    (dict(steps=[1], factor=float("nan")), "factor"),
    (dict(steps=[1], param_pattern="("), "not a regular expression"),
    (dict(steps=[1], param_pattern="attention"), "matches no trainable parameter"),
])
def test_injector_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpikeInjector(_model(), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mode="elementwise"), "mode"),
    (dict(log_every=0), "log_every"),
    (dict(gss_threshold=-1.0), "gss_threshold"),
])
def test_monitor_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientSpikeMonitor(_model(), **kwargs)


def test_monitor_rejects_bad_observe_calls():
    model = _model()
    monitor = GradientSpikeMonitor(model)
    monitor.observe(3)
    with pytest.raises(ValueError, match="not after the previous step"):
        monitor.observe(3)
    with pytest.raises(ValueError, match="0-dim tensor"):
        monitor.observe(4, loss=torch.ones(2))
    with pytest.raises(ValueError, match="'lr'"):
        monitor.observe(5, scalars={"lr": "high"})


def test_only_the_main_process_writes_and_trackers_get_rows(tmp_path):
    from accelerate import Accelerator

    model = _model()
    stream = _grads(model, 65)
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path / "main"))
    accelerator.init_trackers("monitor")
    _feed(GradientSpikeMonitor(model, run_dir=tmp_path / "main", log_every=5, accelerator=accelerator),
          model, stream)
    accelerator.end_training()
    assert list((tmp_path / "main").rglob("events.out.tfevents.*"))

    class Worker:
        is_main_process = False

        def log(self, *args, **kwargs):
            raise AssertionError("a non-main process must not log")

    _feed(GradientSpikeMonitor(model, run_dir=tmp_path / "worker", log_every=5, accelerator=Worker()),
          model, stream)
    assert not (tmp_path / "worker").exists()


def test_log_scalars_row_and_truncated_jsonl_is_read_with_a_warning(tmp_path):
    monitor = GradientSpikeMonitor(_model(), run_dir=tmp_path)
    monitor.log_scalars(12, {"eval_loss": torch.tensor(2.5), "eval_ppl": math.exp(2.5)})
    path = tmp_path / "metrics.jsonl"
    assert _rows(path) == [{"step": 12, "eval_loss": 2.5, "eval_ppl": pytest.approx(math.exp(2.5))}]
    with path.open("a") as f:
        f.write('{"step": 13, "loss": 2.')  # a run killed mid-write
    rows, warnings = read_jsonl(path)
    assert [r["step"] for r in rows] == [12]
    assert len(warnings) == 1 and "cut short" in warnings[0]
    assert read_jsonl(tmp_path / "absent.jsonl") == ([], ["absent.jsonl is missing from " + str(tmp_path)
                                                          + ": nothing to show from it"])


def _fsdp_worker(out: str) -> None:
    """Each rank monitors an FSDP2-sharded copy; rank 0 also monitors an unsharded copy on the full batch."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    sharded = nn.Sequential(nn.Linear(12, 33), nn.Tanh(), nn.Linear(33, 10), nn.LayerNorm(10))  # 33: uneven
    single = nn.Sequential(nn.Linear(12, 33), nn.Tanh(), nn.Linear(33, 10), nn.LayerNorm(10))
    single.load_state_dict(sharded.state_dict())
    fully_shard(sharded)
    runs = [(sharded, f"{out}/sharded_{mode}", mode) for mode in ("tensor", "element")]
    if rank == 0:
        runs += [(single, f"{out}/single_{mode}", mode) for mode in ("tensor", "element")]
    monitors = [(model, GradientSpikeMonitor(model, run_dir=path, mode=mode, log_every=8))
                for model, path, mode in runs]
    injectors = {id(m): SpikeInjector(m, [SPIKE_STEP], param_pattern=r"^0\.weight")
                 for m in (sharded, single)}
    for step in range(1, SPIKE_STEP + 6):  # no optimizer: both copies keep the same weights
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 12, generator=gen), torch.randn(16, 10, generator=gen)
        n = 16 // world
        for model in {id(m): m for m, _ in monitors}.values():
            xs, ys = (x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]) if model is sharded else (x, y)
            nn.functional.mse_loss(model(xs), ys).backward()  # FSDP2 averages the halves: the full-batch grad
            injectors[id(model)].apply(step)
        for _, monitor in monitors:
            monitor.observe(step)
        for model, _ in monitors:
            model.zero_grad()
    for _, monitor in monitors:
        monitor.close()


@pytest.mark.distributed
def test_fsdp2_norms_are_global_and_events_written_once(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for mode in ("tensor", "element"):
        sharded = _rows(tmp_path / f"sharded_{mode}" / "metrics.jsonl")
        single = _rows(tmp_path / f"single_{mode}" / "metrics.jsonl")
        assert [r["step"] for r in sharded] == [r["step"] for r in single] == [*range(8, 65, 8), 65]
        for a, b in zip(sharded, single):
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
            assert a["grad_score"] == pytest.approx(b["grad_score"], rel=1e-4)
        events = _rows(tmp_path / f"sharded_{mode}" / "spikes.jsonl")
        assert [(e["step"], e["param"]) for e in events] == [(SPIKE_STEP, "0.weight")]  # once, not per rank
        (reference,) = _rows(tmp_path / f"single_{mode}" / "spikes.jsonl")
        assert events[0]["score"] == pytest.approx(reference["score"], rel=1e-4)
        assert events[0]["value"] == pytest.approx(reference["value"], rel=1e-4)


if __name__ == "__main__":  # the worker of the FSDP2 test, started by torch.distributed.run
    import torch.distributed as dist
    from workers.teardown import end_worker  # tests/ is this script's folder

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    _fsdp_worker(sys.argv[1])
    end_worker()


def test_cpp_element_scores_equal_the_torch_operations(torch_threads):
    """The one-pass C++ op against the torch version of the same operations: bitwise, with tensors split
    over threads, entries that are always 0, a 1000x spike and a NaN."""
    from spam_opt.monitor.statistics import _cpp_takes, element_scores_torch

    shapes = [(300, 257), (70001,), (3,)]
    gen = torch.Generator().manual_seed(0)
    sums_torch, sums_cpp = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    for t in range(1, 30):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        grads[1][:100] = 0.0
        if t == 20:
            grads[0][7, 7] *= 1000.0
        if t == 25:
            grads[2][1] = float("nan")
        assert _cpp_takes(grads)
        expected = element_scores_torch(sums_torch, grads, [float(t)] * 3, 10.0)
        got = torch.ops.spam_opt_monitor.gradient_spike_scores_(sums_cpp, grads, [float(t)] * 3, 10.0)
        assert torch.equal(got[1], expected[1]) and torch.allclose(got[0], expected[0], rtol=0, atol=0,
                                                                      equal_nan=True), t
        if t == 20:
            assert expected[1][0] >= 1 and expected[0][0] > 10  # GSS is at most t: 20 here
    assert torch.equal(sums_cpp[0], sums_torch[0]) and torch.equal(sums_cpp[1], sums_torch[1])


@pytest.mark.parametrize("mode", ["tensor", "element"])
def test_a_second_spike_on_the_same_tensor_is_still_flagged(tmp_path, mode):
    """Spikes enter the running means at the bound they broke: counted in full, the 1000x spike at step 60
    would lift the mean so far that the same spike at step 100 scored under 50."""
    model = _model()
    stream = _grads(model, 110)
    stream[99][SPIKED] = stream[99][SPIKED] * 1000
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=10, mode=mode)
    _feed(monitor, model, stream)
    flagged = {e["step"] for e in _rows(tmp_path / "spikes.jsonl") if e["param"] == SPIKED}
    assert flagged == {SPIKE_STEP, 100}
