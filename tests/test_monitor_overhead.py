"""The monitor-overhead benchmark's paired estimate: the per-round ratio's median and its 95% interval."""

from __future__ import annotations

import random

import benchmark_scripts


def test_pairing_by_round_resolves_a_one_percent_overhead_under_load_swings():
    overhead = benchmark_scripts.load("monitor_overhead").paired_overhead
    rng = random.Random(0)
    load = [1 + rng.random() for _ in range(150)]  # each round's load: steps from 1x to 2x alike
    base = [x * (1 + rng.gauss(0, 0.01)) for x in load]
    step = [x * 1.01 * (1 + rng.gauss(0, 0.01)) for x in load]
    mid, low, high = overhead(step, base)
    assert 0 < low < 0.01 < high < 0.02 and low <= mid <= high
    # unpaired medians of the same steps differ by more than the overhead itself, either way
    assert abs(sorted(step)[75] / sorted(base)[75] - 1.01) > abs(mid - 0.01)


def test_no_overhead_gives_an_interval_around_zero():
    overhead = benchmark_scripts.load("monitor_overhead").paired_overhead
    rng = random.Random(1)
    base = [1 + rng.random() for _ in range(101)]
    _, low, high = overhead([x * (1 + rng.gauss(0, 0.01)) for x in base], base)
    assert low < 0 < high
