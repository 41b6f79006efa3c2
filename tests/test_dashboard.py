"""The dashboard: what it plots from a monitored run, bad run directories, the CLI, and a real browser."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from watching import watching

from spam_opt import run_files as rf
from spam_opt.dashboard import render_dashboard
from spam_opt.dashboard.cli import main
from spam_opt.dashboard.render import build_figure
from spam_opt.dashboard.run_data import load_run
from spam_opt.monitor import GradientSpikeMonitor, SpikeInjector
from spam_opt.spam import SPAM

CHROMIUM = Path("/usr/bin/chromium")
STEPS, SPIKE = 120, 90
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A monitored SPAM run of a tiny model: an injected spike, momentum resets, eval rows, firing rates."""
    run_dir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    opt = SPAM(model.parameters(), lr=1e-2, threshold=100.0, reset_interval=50, warmup_steps=5, clip_delay=5)
    injector = SpikeInjector(model, [SPIKE], factor=1000.0, param_pattern=r"^1\.")
    monitor = GradientSpikeMonitor(model, opt, run_dir=run_dir, log_every=5)
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    for step in range(1, STEPS + 1):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        injector.apply(step)
        monitor.observe(step, loss=loss.detach(), scalars={
            "lr": 1e-2, "firing_rate/block0": torch.tensor(0.1 + step / 1000), "firing_rate/block1": 0.2})
        opt.step()
        opt.zero_grad()
        if step % 40 == 0:
            monitor.log_scalars(step, {"eval_loss": loss.detach() + 0.1})
    monitor.close()
    return run_dir


def _traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data}


def test_figure_holds_every_chart_with_the_run_data(run_dir):
    rows = [json.loads(line) for line in (run_dir / rf.METRICS).read_text().splitlines()]
    events = [json.loads(line) for line in (run_dir / rf.SPIKES).read_text().splitlines()]
    fig = build_figure(load_run(run_dir))
    traces = _traces(fig)
    train = [r for r in rows if "loss" in r]
    assert list(traces["train loss"].x) == [r["step"] for r in train]
    assert list(traces["train loss"].y) == pytest.approx([r["loss"] for r in train])
    assert list(traces["eval loss"].x) == [40, 80, 120]
    assert list(traces["grad norm"].y) == pytest.approx([r["grad_norm"] for r in train])
    grad_steps = {e["step"] for e in events if e["kind"] in ("grad_norm", "grad_max")}
    spike_steps = sorted(grad_steps | {e["step"] for e in events if e["kind"] == "loss"})
    assert SPIKE in grad_steps and list(traces["spikes"].x) == spike_steps  # gradient and loss spikes
    assert "1.weight" in "".join(traces["spikes"].text)
    heat = traces["spike score"]
    assert list(heat.y) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert list(heat.x) == [r["step"] for r in train]
    column = list(heat.x).index(SPIKE)
    assert heat.z[2][column] > 1.7  # log10 score of the injected 1000x spike on 1.weight: above 50
    clips: dict[int, int] = {}
    for e in events:
        if e["kind"] == "clip":
            clips[e["step"]] = clips.get(e["step"], 0) + e["value"]
    assert clips and dict(zip(traces["entries clipped"].x, traces["entries clipped"].y)) == clips
    assert list(traces["block0"].y) == pytest.approx([0.1 + r["step"] / 1000 for r in train])
    assert "block1" in traces and "lr" in traces
    resets = {s.x0 for s in fig.layout.shapes if s.line.dash == "dot"}  # one line per chart
    assert resets == {50, 100}


def test_report_is_self_contained_and_lists_the_largest_spikes(run_dir, tmp_path):
    path = render_dashboard(run_dir, tmp_path / "report.html")
    page = path.read_text()
    assert path == tmp_path / "report.html" and "<script src=" not in page  # plotly.js is inline
    assert "Plotly.newPlot" in page and "Largest spikes" in page
    assert f"<td>{SPIKE}</td><td>1.weight</td>" in page
    assert render_dashboard(run_dir) == run_dir / rf.DASHBOARD


def test_truncated_and_missing_logs_give_a_report_with_warnings(run_dir, tmp_path, caplog):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    lines = (run_dir / rf.METRICS).read_text().splitlines()
    (damaged / rf.METRICS).write_text("\n".join(lines[:10]) + "\n" + lines[10][:25])  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="spam_opt.dashboard"):
        page = render_dashboard(damaged).read_text()
    assert "cut short" in caplog.text and "spikes.jsonl is missing" in caplog.text
    assert "cut short" in page and "spikes.jsonl is missing" in page
    assert load_run(damaged).series["loss"][0] == [json.loads(line)["step"] for line in lines[:10]
                                                   if "loss" in json.loads(line)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "metrics.jsonl is missing" in render_dashboard(empty).read_text()
    with pytest.raises(FileNotFoundError, match="no run directory"):
        render_dashboard(tmp_path / "absent")
    assert "no run directory" in render_dashboard(tmp_path / "absent", tmp_path / "a.html").read_text()


def test_cli_renders_and_rejects_a_missing_directory(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "-o", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").stat().st_size > 1_000_000  # includes plotly.js
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "absent")])
    assert exc.value.code == 2 and "no run directory" in capsys.readouterr().err


def test_cli_watch_rerenders_when_the_run_grows(run_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(run_dir, live, ignore=shutil.ignore_patterns(rf.DASHBOARD))
    metrics = (live / rf.METRICS).read_text().splitlines()
    (live / rf.METRICS).write_text("\n".join(metrics[:5]) + "\n")
    with watching(str(live)) as proc:
        assert proc.stdout.readline().startswith("rendered")
        assert 'http-equiv="refresh"' in (live / rf.DASHBOARD).read_text()
        (live / rf.METRICS).write_text("\n".join(metrics) + "\n")
        assert proc.stdout.readline().startswith("rendered")
        assert f"steps 5–{STEPS}" in (live / rf.DASHBOARD).read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no chromium at /usr/bin/chromium to open the report")
def test_report_renders_in_headless_chromium_without_console_errors(run_dir, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from spam_opt.dashboard.screenshot import headless_chromium

    page = render_dashboard(run_dir, tmp_path / "report.html")
    with headless_chromium(1200, 1800) as driver:
        driver.get(page.as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.find_elements("css selector", "g.hm image"))
        count = lambda selector: len(driver.find_elements("css selector", selector))  # noqa: E731
        assert count("g.cartesianlayer g.subplot") == 6  # loss, grad norm, heat map, clips, lr, firing rates
        assert count("g.scatterlayer g.trace") >= 7 and count("g.barlayer g.trace") == 1
        assert count("g.hm image") == 1  # the heat map is drawn
        assert driver.execute_script("return document.querySelector('.js-plotly-plot')._fullData.length") > 8
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert driver.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
