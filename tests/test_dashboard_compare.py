"""Comparisons of several runs: the summary table against the runs' own logs, run discovery, binning, the
command line (folders, --watch), and the pages in headless Chromium."""

from __future__ import annotations

import json
import random
import re
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
from spam_opt.dashboard.clock import elapsed_s, tokens_per_step, tokens_seen
from spam_opt.dashboard.compare import MAX_CURVE_POINTS, MAX_EMBED_POINTS, section_json
from spam_opt.dashboard.run_data import RunData
from spam_opt.dashboard.runs import load_runs, unique_names
from spam_opt.run_files import GRADIENT_KINDS

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
              "--batch-size", "4", "--max-steps", str(STEPS), "--lr-warmup-steps", "2", "--log-every", "1",
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
        if tag == "table" and attrs.get("class") == "runs per-run":
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
    data = section_json(load_runs([RunRef(runs[2], group="spam"), RunRef(runs[1], group="spam")]))
    assert {r["group"] for r in data["runs"]} == {"spam"} and len({r["colour"] for r in data["runs"]}) == 1
    assert [r["dash"] for r in data["runs"]] == ["solid", "dash"]  # the seeds told apart when drawn alone
    assert [p["key"] for p in data["panels"]] == ["loss", "eval_loss", "grad_norm", "clipped", "lr"]
    spam = data["runs"][0]
    assert spam["config"]["optimizer"] == "spam" and spam["config"]["launch.num_processes"] == "1"
    assert spam["clocks"]["tokens"] == {"perStep": 4 * 32}  # batch x seq_len, from config.yaml
    assert spam["resets"][0] == [5, 10]
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


def test_long_curves_are_embedded_binned_keeping_the_largest_value(tmp_path):
    run_dir = tmp_path / "long"
    run_dir.mkdir()
    rng = random.Random(0)
    steps = 5000
    losses = [3.0 + rng.random() for _ in range(steps)]
    losses[3001] = 50.0
    rows = [{"step": s + 1, "loss": v, "grad_norm": 1.0, "lr": 1e-3} for s, v in enumerate(losses)]
    (run_dir / rf.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_json,) = section_json(load_runs([RunRef(run_dir)]))["runs"]
    code, values = run_json["curves"]["loss"]
    width = 3  # 5000 steps into at most 2000 bins
    assert code == [min(i + width, steps) for i in range(0, steps, width)]  # each bin's last step
    assert len(values) == 1667 <= MAX_EMBED_POINTS
    expected = [max(losses[i:i + width]) for i in range(0, steps, width)]
    assert values == pytest.approx(expected, rel=1e-4) and max(values) == 50.0
    assert bin_max([1, 2], [5.0, 6.0], 10) == ([1, 2], [5.0, 6.0])
    page = render_comparison([run_dir], tmp_path / "long.html").read_text()
    assert f"Curves longer than {MAX_CURVE_POINTS} points show the largest value of each bin" in page


def test_tokens_and_time_of_each_step():
    config = {"batch_size": 8, "seq_len": 64, "grad_accum": 2,
              "launch": {"num_processes": 4, "batch_size_per_process": 3}}
    assert tokens_per_step(config) == 3 * 64 * 2 * 4  # the launch's batch per process wins
    assert tokens_per_step({"global_batch_size": 16, "seq_len": 10, "launch": {"num_processes": 4}}) == 160
    assert tokens_per_step({"batch_size": 8, "seq_len": 10}) == 80
    assert tokens_per_step({"seq_len": 10}) is None and tokens_per_step({}) is None
    run = RunData(series={"loss": ([10, 20, 40], [3.0, 2.0, 1.0]),
                          "tokens_per_s": ([10, 20, 40], [100.0, 200.0, 50.0])})
    small = {"batch_size": 2, "seq_len": 5}  # 10 tokens a step
    assert tokens_seen(run, small) == ([10, 20, 40], [100.0, 200.0, 400.0])
    assert tokens_seen(run, {}) is None
    # 10 steps at 100 tok/s = 1 s, 10 more at 200 = 0.5 s, 20 more at 50 = 4 s
    assert elapsed_s(run, small) == ([10, 20, 40], [1.0, 1.5, 5.5])
    assert elapsed_s(run, {}) is None
    run.series["time"] = ([10, 20, 40], [1000.0, 1003.0, 1010.0])  # logged: wall clock, gaps included
    run.series["tokens"] = ([10, 20, 40], [7.0, 8.0, 9.0])
    assert elapsed_s(run, {}) == ([10, 20, 40], [0.0, 3.0, 10.0])
    assert tokens_seen(run, small) == ([10, 20, 40], [7.0, 8.0, 9.0])


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


SEED_STEPS, SEED_SPIKE = 1200, 350  # more steps than a panel draws: it bins them


def seed_grid(root: Path) -> list[RunRef]:
    """Two groups of three seeds with their logs written directly: a loss spike in spam seed 1 at step
    SEED_SPIKE; adamw logs throughput only (its time is derived), spam logs the wall clock too."""
    refs = []
    for group in ("adamw", "spam"):
        for seed in range(3):
            run_dir = root / group / f"seed{seed}"
            run_dir.mkdir(parents=True)
            rng = random.Random(f"{group}{seed}")
            rows = []
            for step in range(1, SEED_STEPS + 1):
                loss = 4.0 * 0.999 ** step + 0.3 * rng.random() + (0.1 if group == "spam" else 0.0)
                loss = 9.0 if (group, seed, step) == ("spam", 1, SEED_SPIKE) else loss
                row = {"step": step, "loss": loss, "grad_norm": 1 + rng.random(), "lr": 1e-3,
                       "tokens_per_s": 1000.0}
                if group == "spam":
                    row["time"] = 1.7e9 + 0.25 * step
                rows.append(row)
                if step % 100 == 0:
                    rows.append({"step": step, "eval_loss": loss + 0.05 * seed})
            (run_dir / rf.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
            spike = {"step": SEED_SPIKE, "param": "loss", "kind": "loss", "score": 40.0, "value": 9.0}
            (run_dir / rf.SPIKES).write_text(json.dumps(spike) + "\n" if (group, seed) == ("spam", 1) else "")
            (run_dir / rf.CONFIG).write_text(f"model: llama-tiny\noptimizer: {group}\nlr: 0.001\n"
                                             f"seed: {seed}\nbatch_size: 4\nseq_len: 32\n"
                                             "launch:\n  num_processes: 1\n")
            refs.append(RunRef(run_dir, name=f"{group}-seed{seed}", group=group))
    return refs


def _ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average, the reference for the page's smoothing."""
    out, last = [], 0.0
    for count, v in enumerate(values, start=1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** count))
    return out


def _csv_rows(text: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(text)))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no chromium at /usr/bin/chromium to open the pages")
def test_comparison_pages_in_headless_chromium(grid, tmp_path):
    """One browser: a page of two 3-seed groups (bands, smoothing, zoom, x axes, filter, grouped table, CSV),
    then the trainer's runs in two sections (sorting, legend, a run's details)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from spam_opt.dashboard import screenshot
    from spam_opt.dashboard.screenshot import headless_chromium, wait_for_plots

    refs = seed_grid(tmp_path / "seeds")
    seeds_page = render_comparison(refs, tmp_path / "seeds.html")
    raw = {r.name: {row["step"]: row["loss"] for row in _rows(r.path / rf.METRICS) if "loss" in row}
           for r in refs}
    runs = find_runs(grid)  # llama-adamw, spikegpt-cut, spikegpt-spam
    three = render_comparison({"LLaMA": [runs[0]], "SpikeGPT": [RunRef(runs[2], group="spam"),
                                                                RunRef(runs[1], group="spam")]},
                              tmp_path / "three.html")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with headless_chromium(1400, 1600) as driver:
        js = driver.execute_script
        driver.execute_cdp_cmd("Page.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(seeds_page.as_uri())
        wait_for_plots(driver)
        panel = "document.querySelector('.panel-plot[data-key=\"{}\"]')"
        traces = lambda key, meta: js(  # noqa: E731
            f"return {panel.format(key)}.data.filter(t => t.meta === '{meta}')"
            ".map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y), group: t.legendgroup}))")
        redrawn = lambda: WebDriverWait(driver, 10)  # noqa: E731

        # Bands: each group's mean over its 3 seeds, binned by the max of each bin, encloses every seed.
        driver.find_element("id", "seeds").click()
        redrawn().until(lambda d: traces("loss", "seed"))
        width = -(-SEED_STEPS // MAX_CURVE_POINTS)  # 3 steps a bin
        for group in ("adamw", "spam"):
            (high,) = [t for t in traces("loss", "band-high") if t["group"] == group]
            (low,) = [t for t in traces("loss", "band-low") if t["group"] == group]
            (mean,) = [t for t in traces("loss", "mean") if t["name"].startswith(group)]
            seeds = [t for t in traces("loss", "seed") if t["name"].startswith(group)]
            assert len(seeds) == 3 and mean["x"] == high["x"] == low["x"] == seeds[0]["x"]
            for seed in seeds:
                assert all(lo <= y <= hi for lo, y, hi in zip(low["y"], seed["y"], high["y"]))
            names = [f"{group}-seed{k}" for k in range(3)]
            means = [statistics.mean(raw[n][s] for n in names) for s in range(1, SEED_STEPS + 1)]
            expected = [max(means[i:i + width]) for i in range(0, SEED_STEPS, width)]
            assert mean["y"] == pytest.approx(expected, rel=1e-4)
        assert max(high["y"]) == 9.0  # the spike of spam seed 1 survives binning

        # Smoothing: each run's curve becomes the debiased EMA of its raw values, the raw one kept faint.
        driver.find_element("id", "bands").click()
        before = [t["y"] for t in traces("loss", "run")]

        # Hover: one label with every drawn run's value at that step (the largest of its bin, 598..600).
        label = js(f"const d = {panel.format('loss')}; Plotly.Fx.hover(d, {{xval: 600}});"
                   "return Array.from(d.querySelectorAll('.hoverlayer text')).map(t => t.textContent)")
        assert label[0] == "600" and len(label) == 1 + len(refs)
        for text in label[1:]:
            name, value = text.split(": ")
            assert float(value) == pytest.approx(max(raw[name][s] for s in (598, 599, 600)), rel=1e-4)
        js("const s = document.getElementById('smoothing'); s.value = 0.9;"
           "s.dispatchEvent(new Event('input'))")
        redrawn().until(lambda d: traces("loss", "smoothed"))
        (smoothed,) = [t for t in traces("loss", "smoothed") if t["name"] == "spam-seed1"]
        (faint,) = [t for t in traces("loss", "raw") if t["name"] == "spam-seed1"]
        reference = _ema([raw["spam-seed1"][s] for s in range(1, SEED_STEPS + 1)], 0.9)
        assert smoothed["y"] == pytest.approx(reference[width - 1::width], rel=1e-3)
        assert smoothed["y"] not in before and max(faint["y"]) == 9.0
        (marker,) = [t for t in traces("loss", "spikes")]
        assert marker["x"] == [SEED_SPIKE] and marker["y"] == [9.0]  # on the raw loss, not the smoothed one

        # Zoom: a step range set in one panel is every panel's, drawn at full resolution; reset shows all.
        js(f"Plotly.relayout({panel.format('loss')}, {{'xaxis.range': [300, 400]}})")
        for key in ("eval_loss", "grad_norm", "lr"):
            redrawn().until(lambda d, k=key: js(f"return {panel.format(k)}.layout.xaxis.range") == [300, 400])
        (zoomed,) = [t for t in traces("loss", "raw") if t["name"] == "spam-seed1"]
        assert zoomed["x"] == list(range(299, 402)) and zoomed["y"][SEED_SPIKE - 299] == 9.0
        driver.find_element("id", "reset-zoom").click()
        redrawn().until(lambda d: js(f"return {panel.format('lr')}.layout.xaxis.autorange"))
        js(f"Plotly.relayout({panel.format('lr')}, {{'yaxis.type': 'log'}})")  # y alone: no redraw, no zoom
        assert js(f"return {panel.format('loss')}.layout.xaxis.autorange")
        driver.find_element("css selector", ".panel-plot[data-key='grad_norm']").find_element(
            "xpath", "..").find_element("css selector", "input.log-y").click()  # back to a linear axis
        redrawn().until(lambda d: js(f"return {panel.format('grad_norm')}.layout.yaxis.type") == "linear")

        # x axes: tokens from the config (4 x 32 a step), time logged (spam) or from the throughput (adamw).
        js("const s = document.getElementById('smoothing'); s.value = 0; s.dispatchEvent(new Event('input'))")
        for axis, per_step in (("tokens", {"adamw": 128.0, "spam": 128.0}), ("time", {"adamw": 0.128,
                                                                                      "spam": 0.25})):
            js(f"const x = document.getElementById('x-axis'); x.value = '{axis}';"
               "x.dispatchEvent(new Event('change'))")
            title = {"tokens": "tokens seen", "time": "wall-clock time (s)"}[axis]
            redrawn().until(
                lambda d, t=title: js(f"return {panel.format('loss')}.layout.xaxis.title.text") == t)
            for t in traces("loss", "run"):
                group = t["name"].split("-")[0]
                offset = 0.25 if axis == "time" and group == "spam" else 0.0  # time since the first row
                steps = list(range(width, SEED_STEPS + 1, width))
                assert t["x"] == pytest.approx([s * per_step[group] - offset for s in steps], rel=1e-4)

        # Filter by name and by a setting; the CSV export is the table as shown.
        tables = "document.querySelectorAll('table.runs.per-run tbody tr')"
        shown = lambda: js(  # noqa: E731
            f"return Array.from({tables}).filter(r => !r.hidden).map(r => Array.from(r.cells)"
            ".map(c => c.textContent.trim()))")
        filter_box = driver.find_element("id", "filter")
        filter_box.send_keys("seed=1")
        redrawn().until(lambda d: len(shown()) == 2)
        assert [r[0] for r in shown()] == ["adamw-seed1", "spam-seed1"]
        assert {t["name"] for t in traces("loss", "run")} == {"adamw-seed1", "spam-seed1"}
        filter_box.clear()
        filter_box.send_keys("spam")
        redrawn().until(lambda d: len(shown()) == 3)
        driver.find_element("css selector", "button.csv").click()
        redrawn().until(lambda d: (downloads / "comparison-0.csv").is_file())
        header = js("return Array.from(document.querySelectorAll('table.runs.per-run th'))"
                    ".map(h => h.textContent.trim())")
        exported = _csv_rows((downloads / "comparison-0.csv").read_text())
        assert exported == [header] + [[c.replace("–", "") for c in row] for row in shown()]
        driver.find_element("css selector", ".panel-plot[data-key='lr']").find_element(
            "xpath", "..").find_element("css selector", "button.png").click()  # one panel as a picture
        redrawn().until(lambda d: (downloads / "lr.png").is_file())
        assert (downloads / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # One row per group: mean, sample standard deviation and n of each number.
        filter_box.clear()
        filter_box.send_keys(" ")
        driver.find_element("css selector", "input.per-group").click()
        cells = js("const t = document.querySelector('table.runs.per-group');"
                   "const h = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);"
                   "const col = h.indexOf('final eval loss');"
                   "return Array.from(t.tBodies[0].rows).map(r => [r.cells[0].textContent,"
                   " r.cells[1].textContent, r.cells[col].dataset.sort, r.cells[col].dataset.std,"
                   " r.cells[col].dataset.n])")
        for group, n, mean, std, count in cells:
            finals = [_rows(r.path / rf.METRICS)[-1]["eval_loss"] for r in refs if r.group == group]
            assert (n, count) == ("3", "3")
            assert float(mean) == pytest.approx(statistics.mean(finals))
            assert float(std) == pytest.approx(statistics.stdev(finals))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []

        driver.get(three.as_uri())
        wait_for_plots(driver)
        names = [e.text for e in driver.find_elements("css selector",
                                                      "table.runs.per-run tbody tr td:first-child")]
        assert names == ["llama-adamw", "spikegpt-spam", "spikegpt-cut"]
        headers = driver.find_elements("css selector", "section.compare:nth-of-type(2) table.runs.per-run th")
        column = [h.text for h in headers].index("final eval loss")
        sort_keys = ("return Array.from(document.querySelectorAll('section.compare')[1]"
                     f".querySelectorAll('table.runs.per-run tbody tr')).map(r => Number(r.cells[{column}]"
                     ".dataset.sort))")
        for direction in ("ascending", "descending"):
            headers[column].click()
            losses = js(sort_keys)
            assert losses == sorted(losses, reverse=direction == "descending")
            assert headers[column].get_attribute("aria-sort") == direction
        section = "document.querySelectorAll('section.compare')[1]"
        drawn_runs = (f"return Array.from({section}.querySelectorAll('.panel-plot'))[0].data"
                      ".filter(t => t.meta === 'mean').length")
        assert js(drawn_runs) == 1  # the group's two runs as one mean
        (entry,) = driver.find_elements("css selector", "section.compare:nth-of-type(2) .legend-item")
        entry.click()  # the group's one entry hides both
        redrawn().until(lambda d: js(drawn_runs) == 0)
        detail = driver.find_element("css selector", "details.run-detail#run-1-0")  # spikegpt-spam
        assert "firing rates" in detail.text and not detail.find_elements("css selector", ".main-svg")
        detail.find_element("css selector", "summary").click()
        WebDriverWait(driver, 30).until(lambda d: detail.find_elements("css selector", "g.hm image"))
        drawn = detail.find_element("css selector", ".detail-plot")
        firing = js("return arguments[0]._fullData.filter(t => t.legendgroup === 'firing').length", drawn)
        assert firing == 5  # the embedding and the att and ffn neurons of 2 blocks
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    png = screenshot.screenshot(three, tmp_path / "shots" / "three.png", width=1000)  # the whole page
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header's size fields
    assert width == 1000 and height > 2000
    with pytest.raises(SystemExit) as exc:
        screenshot.main([str(three), str(png), "--height", "20"])
    assert exc.value.code == 2


def test_readme_quotes_the_committed_page_size():
    root = Path(__file__).resolve().parents[1]
    result = (root / "benchmarks" / "results" / "dashboard_size.md").read_text()
    row = next(line for line in result.splitlines() if line.startswith("| 20 | 1000 |"))
    page, library, _, _, single = [c.strip() for c in row.strip("|").split("|")[2:]]
    assert float(page.split()[0]) < 7.0  # the page's budget for 20 runs of 1000 steps
    readme = " ".join((root / "README.md").read_text().split())
    assert (f"20 runs of 1000 steps (logged every step, llama-9m) make a page of {page}, {library} of it "
            f"plotly.js (one run's own report: {single}; `benchmarks/results/dashboard_size.md`") in readme


def test_readme_quotes_the_committed_opening_time():
    root = Path(__file__).resolve().parents[1]
    result = (root / "benchmarks" / "results" / "dashboard_load.md").read_text()
    median, worst = re.search(r"median \*\*([0-9.]+) s\*\*, max ([0-9.]+) s over 5 loads", result).groups()
    assert "| 100 | 1000 |" in result and float(median) < 5.0  # the budget: 100 runs interactive within 5 s
    readme = " ".join((root / "README.md").read_text().split())
    assert (f"A page of 100 runs opens in headless Chromium and becomes interactive in a median {median} s "
            f"(max {worst} s over 5 loads") in readme
