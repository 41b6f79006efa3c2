"""Comparisons of several runs: the summary table against the runs' own logs, run discovery, binning, the
command line (folders, --watch), and the pages in headless Chromium."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from watching import watching

from spam_opt import run_files as rf
from spam_opt.dashboard import RunRef, find_runs, render_comparison
from spam_opt.dashboard.binning import bin_max
from spam_opt.dashboard.cli import main as dashboard
from spam_opt.dashboard.compare import MAX_CURVE_POINTS, overlay_figure
from spam_opt.dashboard.runs import load_runs, unique_names
from spam_opt.monitor.events import GRADIENT_KINDS

CHROMIUM = Path("/usr/bin/chromium")
STEPS, CUT_AT = 10, 5
SPAM_KWARGS = {"reset_interval": 5, "warmup_steps": 1, "clip_delay": 1, "threshold": 2.0}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """Three runs in one folder: LLaMA with AdamW and the spike guard (a 1e6x spike injected at step 7),
    SpikeGPT with SPAM (clips, momentum resets at steps 5 and 10, firing rates), and that SpikeGPT run cut
    off at step 5 with its spikes.jsonl lost."""
    from trainers.pretrain import main as train

    root = tmp_path_factory.mktemp("compare")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "spam", "clips", "spikes", "and", "adam", "resets"]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(50))}) + "\n"
                              for _ in range(150)))
    common = ["--dataset", str(corpus), "--cache-dir", str(root / "cache"), "--seq-len", "32",
              "--batch-size", "4", "--max-steps", str(STEPS), "--warmup-steps", "2", "--log-every", "1",
              "--eval-every", "5", "--eval-batches", "2", "--save-every", "0",
              "--output-dir", str(root / "grid"), "--no-progress-bar", "--no-dashboard", "--trackers", ""]
    train(common + ["--model", "llama-tiny", "--optimizer", "adamw", "--run-name", "llama-adamw",
                    "--spike-guard", "--guard-min-history", "4", "--inject-spike-steps", "7",
                    "--inject-factor", "1e6"])
    spiking = train(common + ["--model", "spikegpt-tiny", "--optimizer", "spam",
                              "--run-name", "spikegpt-spam", "--optimizer-kwargs", json.dumps(SPAM_KWARGS)])
    cut = root / "grid" / "spikegpt-cut"
    shutil.copytree(spiking, cut, ignore=shutil.ignore_patterns(rf.FINAL, rf.TOKENIZER))
    lines = (cut / rf.METRICS).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= CUT_AT]
    (cut / rf.METRICS).write_text("\n".join(kept) + "\n" + lines[len(kept)][:30])  # killed mid-write
    (cut / rf.SPIKES).unlink()
    return root / "grid"


def _rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines log, but for a cut-off last line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


class _SummaryTables(HTMLParser):
    """The page's summary tables: per table, its headers and per row {header: (text, data-sort)}."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[dict[str, tuple[str, str | None]]]] = []
        self._headers: list[str] = []
        self._row: list[tuple[str, str | None]] | None = None
        self._cell: list | None = None
        self._inside = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("class") == "runs":
            self._inside, self._headers = True, []
            self.tables.append([])
        elif self._inside and tag == "tr":
            self._row = []
        elif self._inside and tag in ("td", "th"):
            self._cell = ["", attrs.get("data-sort")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if not self._inside:
            return
        if tag == "th":
            self._headers.append(self._cell[0].strip())
            self._cell = None
        elif tag == "td":
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row:
            self.tables[-1].append(dict(zip(self._headers, self._row)))
        elif tag == "table":
            self._inside = False


def test_folder_of_runs_gives_one_row_per_run_with_the_numbers_of_its_logs(grid, tmp_path, capsys):
    assert dashboard([str(grid)]) == 0
    page = (grid / rf.COMPARISON).read_text()
    assert capsys.readouterr().out.strip() == str(grid / rf.COMPARISON)
    (table,) = _SummaryTables(page).tables
    rows = {row["run"][0]: row for row in table}
    assert sorted(rows) == ["llama-adamw", "spikegpt-cut", "spikegpt-spam"]
    for name, row in rows.items():
        metrics = _rows(grid / name / rf.METRICS)
        events = _rows(grid / name / rf.SPIKES) if name != "spikegpt-cut" else []
        evals = [r["eval_loss"] for r in metrics if "eval_loss" in r]
        assert float(row["final eval loss"][1]) == pytest.approx(evals[-1])
        assert float(row["best eval loss"][1]) == pytest.approx(min(evals))
        assert int(row["steps"][1]) == max(r["step"] for r in metrics)
        assert float(row["tokens/s"][1]) == pytest.approx(
            statistics.median(r["tokens_per_s"] for r in metrics if "tokens_per_s" in r))
        if name != "spikegpt-cut":
            assert int(row["loss spikes"][1]) == sum(e["kind"] == "loss" for e in events)
            assert int(row["grad spike steps"][1]) == len({e["step"] for e in events
                                                           if e["kind"] in GRADIENT_KINDS})
    llama, spam, cut = rows["llama-adamw"], rows["spikegpt-spam"], rows["spikegpt-cut"]
    assert llama["model"][0] == "llama-tiny" and llama["optimizer"][0] == "adamw lr 0.001, guard skip"
    assert llama["guard skipped"][0] == "1" and llama["entries clipped"][0] == "–"  # AdamW does not clip
    from safetensors.torch import load_file

    weights = load_file(grid / "llama-adamw" / rf.FINAL / "model.safetensors")
    numel = sum(t.numel() for t in weights.values())
    assert int(llama["state"][1]) == 8 * numel  # fused AdamW: 2 float32 moments (step counters not counted)
    options = "reset_interval=5, warmup_steps=1, clip_delay=1, threshold=2"
    assert spam["optimizer"][0] == f"spam lr 0.001, {options}"
    assert spam["momentum resets"][0] == "2"  # steps 5 and 10
    clips = sum(e["value"] for e in _rows(grid / "spikegpt-spam" / rf.SPIKES) if e["kind"] == "clip")
    assert clips > 0 and int(spam["entries clipped"][1]) == clips
    assert cut["steps"][0] == f"{CUT_AT} of {STEPS}" and cut["loss spikes"][0] == "–"
    assert "these runs train different models (llama-tiny, spikegpt-tiny)" in page
    assert f"spikegpt-cut: the logs stop at step {CUT_AT} of {STEPS}" in page
    assert "spikegpt-cut: metrics.jsonl: skipped 1 unreadable line" in page
    assert "spikegpt-cut: spikes.jsonl is missing" in page
    plotly_js_start = page[page.index("<script") : page.index("<script") + 300]
    assert page.count(plotly_js_start) == 1  # plotly.js once, however many runs and plots


def test_sections_groups_and_bad_input(grid, tmp_path, caplog):
    runs = find_runs(grid)
    out = render_comparison({"LLaMA": [runs[0]], "SpikeGPT": [RunRef(runs[2], group="spam"),
                                                              RunRef(runs[1], name="cut", group="spam")]},
                            tmp_path / "sections.html", title="two regimes")
    page = out.read_text()
    assert [len(t) for t in _SummaryTables(page).tables] == [1, 2]
    assert '<a href="#section-0">LLaMA</a>' in page and '<h2 id="section-1">SpikeGPT</h2>' in page
    assert "these runs train different models" not in page  # one model per section
    fig, binned = overlay_figure(load_runs([RunRef(runs[2], group="spam"), RunRef(runs[1], group="spam")]))
    assert not binned and {t.legendgroup for t in fig.data} == {"spam"}
    assert sum(t.showlegend is not False for t in fig.data) == 1  # one legend entry toggles the group
    assert len({t.line.color for t in fig.data if t.mode == "lines"}) == 1
    with pytest.raises(ValueError, match="no run directories to compare"):
        render_comparison([], tmp_path / "empty.html")
    assert dashboard([str(runs[0]), str(tmp_path / "absent"), "-o", str(tmp_path / "two.html")]) == 0
    assert f"no run directory (a folder holding metrics.jsonl) at or under {tmp_path / 'absent'}" in \
        (tmp_path / "two.html").read_text()
    with pytest.raises(SystemExit) as exc:
        dashboard([str(tmp_path / "absent"), str(tmp_path / "absent2")])
    assert exc.value.code == 2


def test_run_discovery_and_names(tmp_path):
    for d in ("b/seed10", "b/seed2", "a/spam/seed0", "a/adamw/seed0", ".hidden/x", "a/spam/seed0/final"):
        (tmp_path / d).mkdir(parents=True)
    for d in ("b/seed10", "b/seed2", "a/spam/seed0", "a/adamw/seed0", ".hidden/x"):
        (tmp_path / d / rf.METRICS).touch()
    found = find_runs(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == \
        ["a/adamw/seed0", "a/spam/seed0", "b/seed2", "b/seed10"]
    assert find_runs(tmp_path / "b" / "seed2") == [tmp_path / "b" / "seed2"]
    assert find_runs(tmp_path / "absent") == []
    assert unique_names(found) == ["adamw/seed0", "spam/seed0", "seed2", "seed10"]


def test_long_curves_are_binned_keeping_the_largest_value(tmp_path):
    run_dir = tmp_path / "long"
    run_dir.mkdir()
    rng = random.Random(0)
    losses = [3.0 + rng.random() for _ in range(1200)]
    losses[700] = 50.0
    rows = [{"step": s + 1, "loss": v, "grad_norm": 1.0, "lr": 1e-3} for s, v in enumerate(losses)]
    (run_dir / rf.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig, binned = overlay_figure(load_runs([RunRef(run_dir)]))
    (loss,) = [t for t in fig.data if t.hovertemplate and "loss %" in t.hovertemplate]
    width = 3  # 1200 steps into at most 500 bins
    assert binned and len(loss.x) == 400 <= MAX_CURVE_POINTS
    assert list(loss.x) == list(range(width, 1201, width))
    assert list(loss.y) == pytest.approx([max(losses[i:i + width]) for i in range(0, 1200, width)], rel=1e-4)
    assert max(loss.y) == 50.0
    assert bin_max([1, 2], [5.0, 6.0], 10) == ([1, 2], [5.0, 6.0])
    assert "largest value of each bin" in render_comparison([run_dir], tmp_path / "long.html").read_text()


def test_watch_follows_a_folder_as_runs_appear(grid, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copytree(grid / "llama-adamw", live / "first",
                    ignore=shutil.ignore_patterns(rf.FINAL, rf.TOKENIZER))
    with watching(str(live)) as proc:
        assert proc.stdout.readline().strip() == f"rendered {live / 'comparison.html'}"
        page = (live / rf.COMPARISON).read_text()
        assert 'http-equiv="refresh"' in page and "1 run(s)" in page
        shutil.copytree(grid / "spikegpt-spam", live / "second",
                        ignore=shutil.ignore_patterns(rf.FINAL, rf.TOKENIZER))
        assert proc.stdout.readline().startswith("rendered")
        page = (live / rf.COMPARISON).read_text()
        assert "2 run(s)" in page and "second" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no chromium at /usr/bin/chromium to open the pages")
def test_comparisons_of_two_and_three_runs_in_headless_chromium(grid, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from spam_opt.dashboard import screenshot
    from spam_opt.dashboard.screenshot import headless_chromium, wait_for_plots

    runs = find_runs(grid)  # llama-adamw, spikegpt-cut, spikegpt-spam
    assert dashboard([str(runs[0]), str(runs[2]), "-o", str(tmp_path / "two.html")]) == 0
    three = render_comparison({"LLaMA": [runs[0]], "SpikeGPT": [RunRef(runs[2], group="spam"),
                                                                RunRef(runs[1], group="spam")]},
                              tmp_path / "three.html")
    with headless_chromium(1200, 1600) as driver:
        names = lambda: [e.text for e in driver.find_elements(  # noqa: E731
            "css selector", "table.runs tbody tr td:first-child")]
        driver_js = driver.execute_script
        driver.get((tmp_path / "two.html").as_uri())
        wait_for_plots(driver)
        assert names() == ["llama-adamw", "spikegpt-spam"]
        headers = driver.find_elements("css selector", "table.runs th")
        column = [h.text for h in headers].index("final eval loss")
        header = headers[column]
        js = ("return Array.from(document.querySelectorAll('table.runs tbody tr'))"
              f".map(r => Number(r.cells[{column}].dataset.sort))")
        for direction in ("ascending", "descending"):
            header.click()
            losses = driver_js(js)
            assert losses == sorted(losses, reverse=direction == "descending")
            assert header.get_attribute("aria-sort") == direction
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []

        driver.get(three.as_uri())
        wait_for_plots(driver)
        assert names() == ["llama-adamw", "spikegpt-spam", "spikegpt-cut"]
        assert len(driver.find_elements("css selector", "table.runs")) == 2
        plots = "document.querySelectorAll('.js-plotly-plot')"
        spam_visible = (f"return {plots}[1]._fullData.filter(t => t.legendgroup === 'spam')"
                        ".map(t => t.visible)")
        assert set(driver_js(spam_visible)) == {True}
        legend_items = driver.find_elements("css selector", ".js-plotly-plot")[1].find_elements(
            "css selector", ".legend .traces .legendtoggle")
        assert len(legend_items) == 1  # the group's one entry
        legend_items[0].click()
        WebDriverWait(driver, 10).until(lambda d: set(d.execute_script(spam_visible)) == {"legendonly"})
        detail = driver.find_element("css selector", "details.run-detail#run-1-0")  # spikegpt-spam
        assert "firing rates" in detail.text and not detail.find_elements("css selector", ".main-svg")
        detail.find_element("css selector", "summary").click()
        WebDriverWait(driver, 30).until(lambda d: detail.find_elements("css selector", "g.hm image"))
        drawn = detail.find_element("css selector", ".detail-plot")
        firing = driver_js("return arguments[0]._fullData.filter(t => t.legendgroup === 'firing').length",
                           drawn)
        assert firing == 5  # the embedding and the att and ffn neurons of 2 blocks
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        assert driver.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
    png = screenshot.screenshot(three, tmp_path / "shots" / "three.png", width=1000)  # the whole page
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header's size fields
    assert width == 1000 and height > 2000
    with pytest.raises(SystemExit) as exc:
        screenshot.main([str(three), str(png), "--height", "20"])
    assert exc.value.code == 2
