"""The benchmarks' load watch: what it counts as other processes' CPU time, when it marks a table measured
under load, how it interleaves variants and writes a median with its range (no timings are asserted)."""

from __future__ import annotations

import subprocess
import sys

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def machine_load():
    return benchmark_scripts.load("machine_load")


def test_other_processes_share_leaves_out_this_process_and_its_children(machine_load):
    counters = machine_load._Counters
    before = counters(busy=1000, total=4000, own=100)
    # 800 ticks busy of 2000, 500 of them this process's: the others kept 300 / 2000 of the CPUs busy.
    assert before.others_share(counters(busy=1800, total=6000, own=600)) == pytest.approx(0.15)
    assert before.others_share(counters(busy=1000, total=4000, own=100)) == 0.0
    now = counters.read()
    if now is not None:  # Linux: a compiler run as a child counts as this process's own time once waited for
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
        later = counters.read()
        assert later.own > now.own


def test_a_busy_machine_marks_the_table(machine_load, monkeypatch):
    readings = iter([machine_load._Counters(busy=0, total=1000, own=0),  # the wait's first look
                     machine_load._Counters(busy=50, total=2000, own=0),  # 5% by others: idle
                     machine_load._Counters(busy=50, total=2000, own=0),  # start of the measurement
                     machine_load._Counters(busy=900, total=4000, own=400)])  # others: 450 / 2000
    monkeypatch.setattr(machine_load._Counters, "read", classmethod(lambda cls: next(readings)))
    monkeypatch.setattr(machine_load, "_POLL_S", 0.0)
    with machine_load.watch(max_wait_s=5) as load:
        pass
    assert load.idle_at_start and load.others_share == pytest.approx(0.225) and load.under_load
    assert load.summary().startswith("**measured under load** (others were busy;")
    quiet = machine_load.Load(load_before=0.2, idle_at_start=True, waited_s=0.0, load_after=1.9,
                              others_share=0.01)
    assert not quiet.under_load and quiet.summary().startswith("Measured on an idle machine (")
    never_idle = machine_load.Load(load_before=6.0, idle_at_start=False, waited_s=180.0, others_share=0.0)
    assert never_idle.summary().startswith("**measured under load** (the machine never became idle;")


def test_interleave_moves_the_first_variant_along_and_spread_reads_median_and_range(machine_load):
    calls = []

    def variant(name, seconds):
        return lambda: calls.append(name) or seconds.pop(0)

    variants = {"a": variant("a", [3.0, 1.0, 2.0]), "b": variant("b", [5.0, 4.0, 6.0])}
    seconds = machine_load.interleave(variants, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert seconds == {"a": [3.0, 1.0, 2.0], "b": [5.0, 4.0, 6.0]}
    assert machine_load.spread(seconds["a"], scale=1e3) == "2,000.0 (1,000.0..3,000.0)"
    assert machine_load.spread([0.5, 0.25], digits=2) == "0.38 (0.25..0.50)"
