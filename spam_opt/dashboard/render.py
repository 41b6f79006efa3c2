"""One self-contained HTML report of a run: loss, gradient norms, spike heat map, clips, LR, firing rates.

Reads what the monitor wrote (``metrics.jsonl``, ``spikes.jsonl``; ``spam_opt.dashboard.run_data``): whatever
part of it is unreadable is left out with a warning in the report and in ``logging``, so a run killed
mid-write still gets a report.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.dashboard.binning import bins
from spam_opt.dashboard.run_config import describe_quant, read_config
from spam_opt.dashboard.run_data import RunData, clipped_per_step, load_run, number, value_at
from spam_opt.run_files import GRADIENT_KINDS, SPIKE_KINDS

logger = logging.getLogger(__name__)

MAX_HEATMAP_COLUMNS = 1000  # wider heat maps are binned (max per bin): the report stays a few MB at most
TOP_EVENTS = 20


def _heatmap(scores: dict[int, dict[str, float]], max_columns: int = MAX_HEATMAP_COLUMNS,
             digits: int | None = None) -> tuple[list[int], list[str], list[list[float | None]]]:
    """Steps, parameter names and log10 scores (rounded to ``digits`` decimals if given), binned to at most
    ``max_columns`` columns."""
    steps = sorted(scores)
    names = list(dict.fromkeys(n for s in steps for n in scores[s]))
    columns = [[steps[i] for i in b] for b in bins(len(steps), max_columns)]
    z = []
    for name in names:
        line = []
        for b in columns:
            values = [scores[s][name] for s in b if name in scores[s]]
            score = math.log10(max(max(values), 1e-6)) if values else None
            line.append(score if score is None or digits is None else round(score, digits))
        z.append(line)
    return [b[-1] for b in columns], names, z


def build_figure(run: RunData) -> Any:
    """The plotly figure: one row per available chart, all sharing the step axis (zooming one zooms all)."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise ImportError("the dashboard needs plotly: pip install spam-opt[dashboard]") from exc
    series = run.series
    clipped = clipped_per_step(run)
    firing = sorted(k for k in series if k.startswith(rf.FIRING_RATE))
    charts = ["Loss (markers: spikes)", "Gradient norm (global)"]
    charts += ["Spike score per parameter (log10)"] if run.scores else []
    charts += ["Entries clipped by the optimizer"] if clipped else []
    charts += ["Learning rate (dotted: momentum resets)"] if rf.LR in series else []
    charts += ["Firing rate per layer"] if firing else []
    heights = [2.0 if c.startswith("Spike score") else 1.0 for c in charts]
    fig = make_subplots(rows=len(charts), cols=1, shared_xaxes=True, subplot_titles=charts,
                        vertical_spacing=0.25 / len(charts), row_heights=heights)
    row = {c.split(" ")[0]: i + 1 for i, c in enumerate(charts)}

    for key, name in ((rf.LOSS, "train loss"), (rf.EVAL_LOSS, "eval loss")):
        if key in series:
            fig.add_trace(go.Scatter(x=series[key][0], y=series[key][1], name=name, mode="lines+markers"
                                     if key == rf.EVAL_LOSS else "lines"), row=1, col=1)
    _spike_markers(fig, go, run)
    for key, name in ((rf.GRAD_NORM, "grad norm"), (rf.GRAD_NORM_MAX, "grad norm (max of interval)")):
        if key in series:
            fig.add_trace(go.Scatter(x=series[key][0], y=series[key][1], name=name, mode="lines"),
                          row=row["Gradient"], col=1)
    fig.update_yaxes(type="log", row=row["Gradient"], col=1)
    if run.scores:
        add_heatmap(fig, go, run.scores, row["Spike"])
    if clipped:
        fig.add_trace(go.Bar(x=clipped[0], y=clipped[1], name="entries clipped"), row=row["Entries"], col=1)
    if "Learning" in row:
        fig.add_trace(go.Scatter(x=series[rf.LR][0], y=series[rf.LR][1], name="lr", mode="lines"),
                      row=row["Learning"], col=1)
    for trace in firing_rate_traces(go, series):
        fig.add_trace(trace, row=row["Firing"], col=1)
    for e in run.events:
        if e["kind"] == rf.MOMENTUM_RESET_EVENT and isinstance(e.get("step"), int):
            fig.add_vline(x=e["step"], line=dict(dash="dot", color="gray", width=1))
    fig.update_xaxes(title_text="step", row=len(charts), col=1)
    fig.update_layout(height=260 * sum(heights) + 120, hovermode="closest", template="plotly_white",
                      margin=dict(l=60, r=30, t=60, b=50),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def add_heatmap(fig: Any, go: Any, scores: dict[int, dict[str, float]], row: int,
                max_columns: int = MAX_HEATMAP_COLUMNS, digits: int | None = None) -> None:
    """The layer x step heat map of spike scores in ``row`` of ``fig``, its color bar beside it."""
    steps, names, z = _heatmap(scores, max_columns, digits)
    low, high = fig.get_subplot(row, 1).yaxis.domain
    fig.add_trace(go.Heatmap(x=steps, y=names, z=z, colorscale="Inferno", name="spike score",
                             colorbar=dict(title="log10", len=high - low, y=(low + high) / 2),
                             hovertemplate="step %{x}<br>%{y}<br>log10 score %{z:.2f}<extra></extra>"),
                  row=row, col=1)


def firing_rate_traces(go: Any, series: dict[str, tuple[list[int], list[float]]]) -> list[Any]:
    """One line per spiking layer (the ``firing_rate/<layer>`` series), in layer-name order."""
    return [go.Scatter(x=series[key][0], y=series[key][1], name=key.removeprefix(rf.FIRING_RATE),
                       mode="lines", legendgroup="firing")
            for key in sorted(k for k in series if k.startswith(rf.FIRING_RATE))]


def _spike_markers(fig: Any, go: Any, run: RunData) -> None:
    """One marker per step that had spikes, on the loss curve; hover lists where and how big."""
    steps, y, text = spike_points(run)
    if not steps:
        return
    fig.add_trace(go.Scatter(x=steps, y=y, mode="markers", name="spikes", text=text, hoverinfo="text",
                             marker=dict(symbol="x", size=10, color="crimson")), row=1, col=1)


def spike_points(run: RunData) -> tuple[list[int], list[float], list[str]]:
    """Per step with gradient, loss or non-finite events: the step, the train loss logged at (or just
    before) it, and a hover text listing its five largest events."""
    loss = run.series.get(rf.LOSS, ([], []))
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    marked = (*SPIKE_KINDS, rf.NONFINITE_EVENT)
    for e in run.events:
        if e["kind"] in marked and isinstance(e.get("step"), int):
            by_step[e["step"]].append(e)
    steps = sorted(by_step)
    fallback = 0.0 if not loss[1] else max(loss[1])
    y = [v if (v := value_at(*loss, s)) is not None else fallback for s in steps]
    text = []
    for s in steps:
        events = sorted(by_step[s], key=lambda e: -(number(e.get("score")) or math.inf))
        lines = [f"{e['kind']} {e['param']} score {_fmt(e.get('score'))}" for e in events[:5]]
        more = f"<br>... and {len(events) - 5} more" if len(events) > 5 else ""
        text.append(f"step {s}<br>" + "<br>".join(html.escape(line) for line in lines) + more)
    return steps, y, text


def _fmt(value: Any) -> str:
    v = number(value)
    return "n/a" if v is None else f"{v:.4g}"


def largest_spikes_table(events: list[dict[str, Any]]) -> str:
    """HTML: a heading and the ``TOP_EVENTS`` largest gradient and loss spikes (step, where, kind, size)."""
    spikes = [e for e in events if e["kind"] in SPIKE_KINDS]
    spikes.sort(key=lambda e: -(number(e.get("score")) or 0.0))
    if not spikes:
        return "<p>No gradient or loss spikes recorded.</p>"
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                         (e.get("step"), e["param"], e["kind"], _fmt(e.get("score")), _fmt(e.get("value"))))
        + "</tr>" for e in spikes[:TOP_EVENTS])
    return (f"<h2>Largest spikes ({min(len(spikes), TOP_EVENTS)} of {len(spikes)})</h2><table>"
            "<tr><th>step</th><th>parameter</th><th>kind</th><th>score</th><th>value</th></tr>"
            f"{cells}</table>")


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.warning{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;margin:.4em 0;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"""


def render_dashboard(run_dir: str | Path, output: str | Path | None = None, *,
                     refresh_s: float | None = None) -> Path:
    """Write the report of ``run_dir`` to ``output`` (default ``run_dir/dashboard.html``) and return its path.

    Unreadable parts of the run are skipped with a warning (logged, and shown at the top of the report).
    ``refresh_s`` makes the page reload itself, for following a run (``spam-dashboard --watch``).

    Example::

        from spam_opt.dashboard import render_dashboard
        path = render_dashboard("runs/exp1")  # runs/exp1/dashboard.html, works offline
    """
    run_dir = Path(run_dir)
    if output is None:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run directory at {run_dir}: pass the directory the monitor writes "
                                    f"to (it holds {rf.METRICS}), or an output path for an empty report")
        output = run_dir / rf.DASHBOARD
    output = Path(output)
    run = load_run(run_dir)
    for warning in run.warnings:
        logger.warning("%s", warning)
    figure = build_figure(run).to_html(full_html=False, include_plotlyjs=True, config={"responsive": True})
    steps = [s for keys in run.series.values() for s in keys[0]]
    summary = (f"steps {min(steps)}–{max(steps)}, " if steps else "no steps logged, ") + \
        f"{sum(e['kind'] in GRADIENT_KINDS for e in run.events)} gradient spike event(s), " + \
        f"{sum(e['kind'] == rf.LOSS_EVENT for e in run.events)} loss spike(s), " + \
        f"{sum(e['kind'] == rf.MOMENTUM_RESET_EVENT for e in run.events)} momentum reset(s)"
    quant = describe_quant(read_config(run_dir)[0])  # a missing config is no news in a one-run page
    summary += f"; low-bit training: {quant}" if quant else ""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    warnings = "".join(f'<div class="warning">⚠ {html.escape(w)}</div>' for w in run.warnings)
    title = html.escape(f"spam-opt run: {run_dir.name or run_dir}")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}<title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><p>{html.escape(summary)}</p>{warnings}"
            f"{figure}{largest_spikes_table(run.events)}</body></html>")
    return write_page(output, page)


def write_page(output: Path, page: str) -> Path:
    """Write ``page`` to ``output`` atomically: a browser reloading mid-write sees the old page or the new."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, output)
    return output
