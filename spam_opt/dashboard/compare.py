"""Several runs in one self-contained HTML page: ``render_comparison``.

Per section (one per regime of a grid, say): a summary table (sortable, filterable, per run or per group,
exported as CSV), the runs' loss, eval loss, gradient norm, entries clipped and LR in panels that zoom
together, and each run's spike heat map, firing rates and largest spikes, drawn when opened. The panels are
drawn in the browser (compare.js) from the curves embedded as JSON: a group's seeds as their mean and min..max
band, EMA smoothing, step, tokens or time on the x axis. plotly.js is included once; each curve is embedded
with at most ``MAX_EMBED_POINTS`` points and drawn with at most ``MAX_CURVE_POINTS`` of the visible range,
each bin keeping its largest value (a spike is never averaged away), so 20 runs of 1000 steps stay a few MB.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.dashboard.binning import bin_max, bins
from spam_opt.dashboard.clock import elapsed_s, tokens_seen
from spam_opt.dashboard.render import (
    STYLE,
    add_heatmap,
    firing_rate_traces,
    largest_spikes_table,
    spike_points,
    write_page,
)
from spam_opt.dashboard.run_data import RunData, clipped_per_step, value_at
from spam_opt.dashboard.runs import ComparedRun, RunRef, load_runs, style_runs
from spam_opt.dashboard.table import summary_table

logger = logging.getLogger(__name__)

MAX_EMBED_POINTS = 2000  # per curve and run in the page: zooming in shows up to these
MAX_CURVE_POINTS = 500  # per drawn curve, over the visible range: longer ones keep each bin's largest value
DETAIL_HEATMAP_COLUMNS = 300  # the per-run heat maps are coarser than a single-run report's
DIGITS = 5  # significant digits of plotted values (the table shows them as logged)
PANELS = (  # key, title, log y axis at first
    (rf.LOSS, "Training loss (x: spikes)", False),
    (rf.EVAL_LOSS, "Eval loss", False),
    (rf.GRAD_NORM, "Gradient norm (largest of each logged interval)", True),
    (rf.CLIPPED, "Entries clipped by the optimizer (cumulative)", False),
    (rf.LR, "Learning rate (triangles: momentum resets)", False),
)

RunList = Sequence["str | Path | RunRef"]


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.{DIGITS}g}") for v in values]


def _steps_json(steps: list[int]) -> list[int] | dict[str, int]:
    """Evenly spaced steps (a run logging every k-th step) as start, stride and count: a few bytes."""
    if len(steps) > 2 and all(b - a == steps[1] - steps[0] for a, b in itertools.pairwise(steps)):
        return {"start": steps[0], "stride": steps[1] - steps[0], "count": len(steps)}
    return steps


def _series_json(steps: list[int], values: list[float]) -> list[Any]:
    steps, values = bin_max(steps, values, MAX_EMBED_POINTS)
    return [_steps_json(steps), _round(values)]


def curves(run: RunData) -> dict[str, tuple[list[int], list[float]]]:
    """The series of ``run`` that the panels show, by panel key, as logged (not binned)."""
    series = run.series
    wanted = {rf.LOSS: series.get(rf.LOSS), rf.EVAL_LOSS: series.get(rf.EVAL_LOSS), rf.LR: series.get(rf.LR),
              rf.GRAD_NORM: series.get(rf.GRAD_NORM_MAX) or series.get(rf.GRAD_NORM)}
    if clipped := clipped_per_step(run):
        wanted[rf.CLIPPED] = (clipped[0], list(itertools.accumulate(clipped[1])))
    return {key: s for key, s in wanted.items() if s and s[0]}


def _strongest(steps: list[int], y: list[float], text: list[str]) -> tuple[list[int], list[float], list[str]]:
    """At most ``MAX_CURVE_POINTS`` markers: per bin of steps, the one highest on the chart."""
    keep = [max(b, key=lambda i: y[i]) for b in bins(len(steps), MAX_CURVE_POINTS)]
    return [steps[i] for i in keep], _round([y[i] for i in keep]), [text[i] for i in keep]


def _clock_json(clock: tuple[list[int], list[float]] | None) -> Any:
    """A run's tokens or seconds per step; a fixed amount per step (tokens from the config) as that amount."""
    if clock is None:
        return None
    steps, values = clock
    if steps[0] > 0 and all(v == s * values[0] / steps[0] for s, v in zip(steps, values)):
        return {"perStep": values[0] / steps[0]}
    return _series_json(steps, values)


def _config_columns(config: dict[str, Any]) -> dict[str, str]:
    """The run's settings as the filter matches them: scalars by key, nested ones as ``section.key``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": str(v) for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            flat[str(key)] = str(value)
    return flat


def run_json(run: ComparedRun) -> dict[str, Any]:
    """What compare.js draws of ``run``: its curves (at most ``MAX_EMBED_POINTS`` each), spike markers at
    the raw loss, momentum resets on the LR, its tokens and seconds per step, and its settings."""
    data = run.data
    spikes = spike_points(data)
    lr = data.series.get(rf.LR)
    resets = sorted({e["step"] for e in data.events
                     if e["kind"] == rf.MOMENTUM_RESET_EVENT and isinstance(e.get("step"), int)})
    clocks = {"tokens": tokens_seen(data, run.config), "time": elapsed_s(data, run.config)}
    return {
        "name": run.name, "group": run.group, "colour": run.colour, "dash": run.dash,
        "curves": {key: _series_json(*s) for key, s in curves(data).items()},
        "spikes": list(_strongest(*spikes)) if spikes[0] else None,
        "resets": [resets, _round([value_at(*lr, s) for s in resets])] if lr and resets else None,
        "clocks": {name: _clock_json(c) for name, c in clocks.items()},
        "config": _config_columns(run.config),
    }


def section_json(runs: list[ComparedRun]) -> dict[str, Any]:
    """A section's data for compare.js: its runs and the panels that some run has a curve for."""
    encoded = [run_json(r) for r in runs]
    panels = [{"key": key, "title": title, "log": log} for key, title, log in PANELS
              if any(key in r["curves"] for r in encoded)]
    return {"runs": encoded, "panels": panels, "maxPoints": MAX_CURVE_POINTS}


def _binned(runs: list[ComparedRun]) -> bool:
    return any(len(s[0]) > MAX_CURVE_POINTS for r in runs for s in curves(r.data).values())


def _go() -> tuple[Any, Any]:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise ImportError("the dashboard needs plotly: pip install spam-opt[dashboard]") from exc
    return go, make_subplots


def detail_figure(run: RunData) -> Any:
    """The run's spike-score heat map and firing rates (spiking models); None when it has neither."""
    go, make_subplots = _go()
    firing = {k: bin_max(*v, MAX_CURVE_POINTS) for k, v in run.series.items() if k.startswith("firing_rate/")}
    charts = ["Spike score per parameter (log10)"] if run.scores else []
    charts += ["Firing rate per layer"] if firing else []
    if not charts:
        return None
    heights = [2.0 if c.startswith("Spike") else 1.0 for c in charts]
    fig = make_subplots(rows=len(charts), cols=1, shared_xaxes=True, subplot_titles=charts,
                        vertical_spacing=0.25 / len(charts), row_heights=heights)
    if run.scores:
        add_heatmap(fig, go, run.scores, 1, DETAIL_HEATMAP_COLUMNS, digits=2)
    for trace in firing_rate_traces(go, {k: (s, _round(v)) for k, (s, v) in firing.items()}):
        fig.add_trace(trace, row=len(charts), col=1)
    fig.update_xaxes(title_text="step", row=len(charts), col=1)
    fig.update_layout(height=260 * sum(heights) + 100, hovermode="closest", template="plotly_white",
                      margin=dict(l=60, r=30, t=50, b=50),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def _warnings(runs: list[ComparedRun]) -> list[str]:
    warnings = [f"{r.name}: {w}" for r in runs for w in (*r.data.warnings, *r.summary.warnings)]
    models = sorted({r.summary.model for r in runs if r.summary.model is not None})
    if len(models) > 1:
        warnings.insert(0, f"these runs train different models ({', '.join(models)}): their losses and "
                           "spike counts need not be comparable")
    return warnings


def _warning_lines(warnings: Sequence[str]) -> str:
    return "".join(f'<div class="warning">⚠ {html.escape(w)}</div>' for w in warnings)


def _script_json(text: str) -> str:
    return text.replace("</", "<\\/")  # a JSON string may not end the <script> that holds it


def _details(run: ComparedRun, index: str) -> str:
    figure = detail_figure(run.data)
    plot = ("" if figure is None else '<div class="detail-plot"></div><script type="application/json" '
            f'class="detail-figure">{_script_json(figure.to_json())}</script>')
    views = "spike heat map, " if run.data.scores else ""
    views += "firing rates, " if any(k.startswith(rf.FIRING_RATE) for k in run.data.series) else ""
    return (f'<details class="run-detail" id="run-{index}"><summary><span class="swatch" style="background:'
            f'{run.colour}"></span>{html.escape(run.name)}: {views}largest spikes</summary>{plot}'
            f"{largest_spikes_table(run.data.events)}</details>")


def _section(title: str, number: int, runs: list[ComparedRun]) -> tuple[str, bool]:
    heading = f'<h2 id="section-{number}">{html.escape(title)}</h2>' if title else ""
    if not runs:
        return heading + _warning_lines(["no runs in this section"]), False
    warnings = _warnings(runs)
    for w in warnings:
        logger.warning("%s%s", f"{title}: " if title else "", w)
    data = section_json(runs)
    plot = "" if data["panels"] else "<p>No run has logged a step yet.</p>"
    details = "".join(_details(r, f"{number}-{i}") for i, r in enumerate(runs))
    tools = ('<div class="table-tools"><label><input type="checkbox" class="per-group"> one row per group '
             '(mean ± sample standard deviation, n)</label> <button class="csv" title="the table as shown, '
             'as a CSV file">export CSV</button></div>')
    return (f'<section class="compare">{heading}{_warning_lines(warnings)}{tools}{summary_table(runs)}'
            '<table class="runs per-group" hidden></table><div class="legend"></div><p class="notice"></p>'
            f'{plot}<div class="panels"></div><script type="application/json" class="section-data">'
            f"{_script_json(json.dumps(data, allow_nan=False, separators=(',', ':')))}</script>"
            f"<h3>Each run (click to open)</h3>{details}</section>"), _binned(runs)


_CONTROLS = """<div class="controls">
<label>x axis <select id="x-axis"><option value="step">step</option>
<option value="tokens">tokens seen</option><option value="time">wall-clock time</option></select></label>
<label title="exponential moving average, debiased (as TensorBoard's); the raw curve stays faint behind">
smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0">
<output id="smoothing-value">0.00</output></label>
<label title="the runs of a group (the seeds of one setting) as their mean and a min..max band">
<input type="checkbox" id="bands" checked> groups as mean and band</label>
<label><input type="checkbox" id="seeds"> and each seed</label>
<label title="words match a run's name or any setting; key=value matches a setting of config.yaml">filter
<input type="search" id="filter" placeholder="spam  lr=0.001  launch.num_processes=8" size="32"></label>
<button id="reset-zoom" title="show every step again (or double-click a panel)">reset zoom</button>
</div>"""

_COMPARE_STYLE = """.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}
.controls{position:sticky;top:0;z-index:10;background:#fafafa;border:1px solid #ddd;padding:.4em .8em;
display:flex;flex-wrap:wrap;gap:.4em 1.4em;align-items:center}
.table-tools{margin:.6em 0 .3em}.legend{margin:.6em 0}.notice{color:#8a6d00;min-height:0;margin:.2em 0}
.legend-item{border:1px solid #ccc;background:white;border-radius:3px;margin:0 .3em .3em 0;cursor:pointer}
.legend-item.off{opacity:.4;text-decoration:line-through}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:.4em 1em}
.panel-head{display:flex;justify-content:flex-start;gap:1em;font-size:.85em;padding-left:60px}
table.runs th{cursor:pointer;background:#f4f4f4;user-select:none}table.runs td:first-child{white-space:nowrap}
table.runs th[aria-sort=ascending]::after{content:" ▲"}
table.runs th[aria-sort=descending]::after{content:" ▼"}
details{margin:.3em 0}summary{cursor:pointer;padding:.2em 0}"""


def _sections(runs: Mapping[str, RunList] | RunList) -> dict[str, list[RunRef]]:
    groups = runs if isinstance(runs, Mapping) else {"": runs}
    return {str(title): [r if isinstance(r, RunRef) else RunRef(r) for r in refs]
            for title, refs in groups.items()}


def render_comparison(runs: Mapping[str, RunList] | RunList, output: str | Path, *, title: str | None = None,
                      refresh_s: float | None = None, warnings: Sequence[str] = ()) -> Path:
    """Write one HTML page comparing ``runs`` to ``output`` and return its path.

    ``runs`` is a list of run directories (paths or ``RunRef``), or a mapping of section titles (one per
    regime of a grid, say) to such lists. Unreadable parts of a run are left out with a warning line;
    ``warnings`` adds lines of the caller's at the top. ``refresh_s`` makes the page reload itself
    (``spam-dashboard --watch``).

    Example::

        from spam_opt.dashboard import RunRef, render_comparison
        render_comparison(["runs/adamw", "runs/spam"], "comparison.html")
        render_comparison({"clean": [RunRef("grid/clean/spam/seed0", group="spam"), ...], ...},
                          "grid/comparison.html", title="Stability grid")
    """
    sections = _sections(runs)
    if not any(sections.values()) and not warnings:
        raise ValueError("no run directories to compare: pass run directories (folders holding "
                         f"{rf.METRICS}), as a list or as a mapping of section titles to lists")
    from plotly.offline import get_plotlyjs

    loaded = {name: load_runs(refs) for name, refs in sections.items()}
    groups = list(dict.fromkeys(r.group for runs in loaded.values() for r in runs))
    for section_runs in loaded.values():
        style_runs(section_runs, groups)
    count = sum(map(len, loaded.values()))
    title = title or f"spam-opt comparison of {count} run{'s' * (count != 1)}"
    parts, binned = [], False
    for number, (name, section_runs) in enumerate(loaded.items()):
        text, was_binned = _section(name, number, section_runs)
        parts.append(text)
        binned |= was_binned
    for w in warnings:
        logger.warning("%s", w)
    titled = [(i, n) for i, n in enumerate(loaded) if n]
    nav = ("<p>Sections: " + " · ".join(f'<a href="#section-{i}">{html.escape(n)}</a>' for i, n in titled)
           + "</p>") if len(titled) > 1 else ""
    note = (f" Curves longer than {MAX_CURVE_POINTS} points show the largest value of each bin of logged "
            "steps, at the bin's last step." if binned else "")
    intro = (f"<p>{count} run(s). Click a column header to sort, a legend entry to hide or show a run (or "
             "group), drag across a panel to zoom all panels of its section to those steps (double-click: "
             "all steps), a run below to open its spike heat map and firing rates. Hovering shows every "
             f"drawn run's value at that step.{note}</p>")
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    script = resources.files("spam_opt.dashboard").joinpath("compare.js").read_text(encoding="utf-8")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>{html.escape(title)}</title><style>{STYLE}\n{_COMPARE_STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>{html.escape(title)}</h1>{intro}{_warning_lines(warnings)}{_CONTROLS}{nav}{''.join(parts)}"
            f"<script>{script}</script></body></html>")
    return write_page(Path(output), page)

