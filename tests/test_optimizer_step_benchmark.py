"""benchmarks/optimizer_step.py: several fresh runs combined into one table (the medians, and every run's
ratio), on the smallest shapes."""

from __future__ import annotations

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def bench():
    return benchmark_scripts.load("optimizer_step")


def _row(label, median, **extra):
    return dict(size="20m", threads=1, label=label, numel=1000, median=median, first=0.1, state=8000,
                moved=28000, triad=1e10, **extra)


def test_runs_combine_into_medians_with_each_runs_ratio(bench):
    base = bench.BASELINE
    runs = [[_row(base, 1.0), _row("SPAM", 1.1), _row("peer", 2.0)],
            [_row(base, 2.0), _row("SPAM", 1.6), dict(size="20m", threads=1, label="peer", error="OOM")],
            [_row(base, 1.0), _row("SPAM", 1.3), _row("peer", 2.0)]]
    rows = {r["label"]: r for r in bench.combine(runs)}
    assert rows["SPAM"]["ratios"] == pytest.approx([1.1, 0.8, 1.3])
    assert rows["SPAM"]["ratio"] == pytest.approx(1.1)  # the median of the runs' ratios
    assert rows["SPAM"]["median"] == pytest.approx(1.3)  # the median of the runs' step times
    assert rows["peer"]["error"] == "OOM"  # failed in one run: reported failed
    table = bench.render(list(rows.values()), "cmd", bench.torch.device("cpu"), rounds=5)
    assert "| SPAM | 1300.0 | 1.10 |" in table and "| 1.10 / 0.80 / 1.30 |" in table
    assert "| peer | failed: OOM |" in table and "median over the runs" in table


def test_a_run_of_the_script_with_two_runs_writes_both_ratios(bench, tmp_path):
    out = tmp_path / "step.md"
    threads = bench.torch.get_num_threads()
    try:
        bench.main(["--sizes", "20m", "--only", r"^SPAM \(default", "--rounds", "1", "--runs", "2",
                    "--threads", "1", "--max-wait", "0", "--out", str(out)])
    finally:
        bench.torch.set_num_threads(threads)
    text = out.read_text()
    spam = next(line for line in text.splitlines() if line.startswith("| SPAM (default flags) |"))
    ratios = [float(x) for x in spam.split("|")[-2].split(" / ")]
    assert len(ratios) == 2 and all(0.1 < x < 10 for x in ratios)
    assert "(median of 2 runs)" in text


def test_bad_run_count_is_a_clear_error(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--runs", "0", "--out", "-"])
    assert "--runs must be at least 1" in capsys.readouterr().err


def test_a_gpu_sized_time_per_parameter_keeps_two_significant_digits(bench):
    """A GPU steps a parameter in a few thousandths of a ns: two decimals would print 0.01 for every row."""
    fast = bench.combine([[_row(bench.BASELINE, 6.1e-9), _row("SPAM", 9.6e-8)]])  # 1000 parameters
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")
             for line in bench.render(fast, "cmd", bench.torch.device("cpu"), rounds=5).splitlines()
             if line.startswith("| ")}
    assert cells[bench.BASELINE][3] == "0.0061" and cells["SPAM"][3] == "0.096"


def test_a_gpu_table_gives_the_time_until_step_returns_beside_the_step(bench):
    """On a GPU a step returns before the device finishes it: its host time beside its time says whether it
    is bound by its launches. A CPU table has no such column (a CPU step is done when it returns)."""
    rows = [dict(_row(bench.BASELINE, 2e-3), host=1e-4), dict(_row("SPAM", 8e-3), host=7.5e-3),
            dict(size="20m", threads=1, label="peer", error="OOM")]
    gpu = bench.render(bench.combine([rows]), "cmd", bench.torch.device("cuda"), rounds=5)
    assert "| optimizer | step ms | host ms | x fused AdamW |" in gpu and "Host ms (on a GPU)" in gpu
    assert "| SPAM | 8.0 | 7.5 | 4.00 |" in gpu
    assert "| peer | failed: OOM |" + " |" * 9 in gpu  # as many cells as the header
    cpu_rows = [{k: v for k, v in r.items() if k != "host"} for r in rows]
    cpu = bench.render(bench.combine([cpu_rows]), "cmd", bench.torch.device("cpu"), rounds=5)
    assert "host ms" not in cpu and "| SPAM | 8.0 | 4.00 |" in cpu
