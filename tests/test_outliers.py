"""The one rolling outlier rule against a float64 transcription; the guard and the monitor agreeing on it."""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from spam_opt import SpikeGuard
from spam_opt.monitor import GradientSpikeMonitor
from spam_opt.monitor.jsonl import read_jsonl
from spam_opt.outliers import RollingOutliers


def _reference(values: list[float], window: int, sigma: float, min_history: int) -> list[tuple[float, bool]]:
    """Float64 rolling z-scores, outliers recorded at the bound they broke, non-finite values not at all."""
    history: list[float] = []
    out = []
    for x in values:
        recent = history[-window:]
        mean = statistics.fmean(recent) if recent else math.nan
        std = statistics.stdev(recent) if len(recent) >= 2 else 0.0
        z = (x - mean) / std if std > 0 else (math.inf if x > mean else math.nan)
        outlier = math.isfinite(x) and len(history) >= min_history and x - mean > sigma * std
        out.append((z, outlier))
        if math.isfinite(x):
            history.append(mean + sigma * std if outlier else x)
    return out


def test_matches_a_float64_rolling_z_score_with_winsorised_outliers():
    gen = torch.Generator().manual_seed(0)
    values = (2.0 + 0.2 * torch.randn(200, generator=gen, dtype=torch.float64)).tolist()
    for t in (30, 31, 32, 80, 150):
        values[t] += 5.0
    values[100] = math.nan
    values[101] = math.inf
    rule = RollingOutliers(window=24)
    got = [rule.observe(torch.tensor(x), 4.0, 10) for x in values]
    expected = _reference(values, 24, 4.0, 10)
    assert [bool(o) for _, o in got] == [o for _, o in expected]
    assert sum(o for _, o in expected) == 5  # every step of the burst: none hidden by the one before
    for (z, _), (z_ref, _) in zip(got[10:], expected[10:]):
        if math.isfinite(z_ref):
            assert abs(float(z) - z_ref) <= 1e-4 * max(1.0, abs(z_ref))


def test_a_lasting_rise_stops_being_an_outlier_within_a_window():
    gen = torch.Generator().manual_seed(5)
    rule = RollingOutliers(window=16)
    for x in (3.0 + 0.1 * torch.randn(30, generator=gen)).tolist():
        rule.observe(torch.tensor(x), 6.0, 8)
    risen = (4.0 + 0.1 * torch.randn(40, generator=gen)).tolist()
    flagged = [t for t, x in enumerate(risen) if bool(rule.observe(torch.tensor(x), 6.0, 8)[1])]
    assert flagged and flagged[-1] < 16, flagged


def test_guard_skips_exactly_where_the_monitor_flags_a_loss_spike(tmp_path):
    """Same losses through both: the guard's loss-driven skips are the monitor's loss events."""
    model = nn.Linear(4, 1)
    guard = SpikeGuard(torch.optim.SGD(model.parameters(), lr=0.0), sigma=6.0, window=32, min_history=20)
    monitor = GradientSpikeMonitor(model, run_dir=tmp_path, log_every=10, loss_threshold=6.0, loss_window=32)
    gen = torch.Generator().manual_seed(2)
    losses = (3.0 + 0.05 * torch.randn(120, generator=gen)).tolist()
    for t in (25, 26, 27, 60, 61, 100):
        losses[t] += 1.0 + 0.1 * t / 120  # bursts and single spikes, some of them near the bound
    skipped = []
    for step, loss in enumerate(losses, start=1):
        for p in model.parameters():
            p.grad = torch.ones_like(p)  # a constant gradient norm: only the loss decides
        monitor.observe(step, loss=torch.tensor(loss))
        guard.step(loss=torch.tensor(loss))
        if bool(guard.last_skipped):
            skipped.append(step)
    monitor.close()
    events, _ = read_jsonl(tmp_path / "spikes.jsonl")
    flagged = [e["step"] for e in events if e["kind"] == "loss"]
    assert len(skipped) >= 4 and skipped == flagged
