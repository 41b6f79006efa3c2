"""Several runs in one self-contained HTML page: ``render_comparison``.

Per section (one per regime of a grid, say): a summary table sortable by any column, the runs' loss, eval
loss, gradient norm, entries clipped and LR overlaid (one colour per run or group, legend toggles, spike
and momentum-reset markers), and each run's spike heat map, firing rates and largest spikes, drawn when
opened. plotly.js is included once; long curves are binned (``MAX_CURVE_POINTS``) and plotted values
rounded, so that 20 runs of 1000 steps stay a file of a few MB.
"""

from __future__ import annotations

import html
import itertools
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from spam_opt.dashboard.binning import bin_max, bins
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

MAX_CURVE_POINTS = 500  # per curve and run: longer ones keep the largest value of each bin of steps
DETAIL_HEATMAP_COLUMNS = 300  # the per-run heat maps are coarser than a single-run report's
DIGITS = 5  # significant digits of plotted values (the table shows them as logged)
CHARTS = (
    ("loss", "Training loss (x: spikes)"),
    ("eval_loss", "Eval loss"),
    ("grad_norm", "Gradient norm (largest of each logged interval)"),
    ("clipped", "Entries clipped by the optimizer (cumulative)"),
    ("lr", "Learning rate (triangles: momentum resets)"),
)

RunList = Sequence["str | Path | RunRef"]


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.{DIGITS}g}") for v in values]


def _curves(run: RunData) -> tuple[dict[str, tuple[list[int], list[float]]], bool]:
    """The overlaid series of ``run``, binned and rounded, and whether any had to be binned."""
    series = run.series
    wanted = {"loss": series.get("loss"), "eval_loss": series.get("eval_loss"),
              "grad_norm": series.get("grad_norm_max") or series.get("grad_norm"), "lr": series.get("lr")}
    if clipped := clipped_per_step(run):
        wanted["clipped"] = (clipped[0], list(itertools.accumulate(clipped[1])))
    curves = {key: bin_max(*s, MAX_CURVE_POINTS) for key, s in wanted.items() if s}
    binned = any(len(curves[key][0]) < len(s[0]) for key, s in wanted.items() if s)
    return {key: (steps, _round(values)) for key, (steps, values) in curves.items()}, binned


def _strongest(steps: list[int], y: list[float], text: list[str]) -> tuple[list[int], list[float], list[str]]:
    """At most ``MAX_CURVE_POINTS`` markers: per bin of steps, the one highest on the chart."""
    keep = [max(b, key=lambda i: y[i]) for b in bins(len(steps), MAX_CURVE_POINTS)]
    return [steps[i] for i in keep], _round([y[i] for i in keep]), [text[i] for i in keep]


def _go() -> tuple[Any, Any]:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise ImportError("the dashboard needs plotly: pip install spam-opt[dashboard]") from exc
    return go, make_subplots


def overlay_figure(runs: list[ComparedRun]) -> tuple[Any, bool]:
    """The runs' curves on shared step axes, one chart per kind, and whether any curve was binned; the
    figure is None when no run has logged anything yet."""
    go, make_subplots = _go()
    curves = [_curves(r.data) for r in runs]
    present = [(key, title) for key, title in CHARTS if any(key in c for c, _ in curves)]
    if not present:
        return None, False
    fig = make_subplots(rows=len(present), cols=1, shared_xaxes=True, subplot_titles=[t for _, t in present],
                        vertical_spacing=0.25 / len(present))
    row = {key: i + 1 for i, (key, _) in enumerate(present)}
    in_legend: set[str] = set()
    for run, (curve, _) in zip(runs, curves):
        name = html.escape(run.name)
        style = dict(legendgroup=run.group, line=dict(color=run.colour, dash=run.dash, width=1.5))
        for key, steps_values in curve.items():
            fig.add_trace(go.Scatter(
                x=steps_values[0], y=steps_values[1], name=run.group, showlegend=run.group not in in_legend,
                mode="lines+markers" if key == "eval_loss" else "lines", **style,
                hovertemplate=f"{name}<br>step %{{x}}<br>{key} %{{y:.5g}}<extra></extra>"),
                row=row[key], col=1)
            in_legend.add(run.group)
        spikes = spike_points(run.data)
        if spikes[0] and "loss" in row:
            steps, y, text = _strongest(*spikes)
            fig.add_trace(go.Scatter(x=steps, y=y, mode="markers", name=run.group, showlegend=False,
                                     legendgroup=run.group, text=[f"{name}<br>{t}" for t in text],
                                     hoverinfo="text", marker=dict(symbol="x", size=9, color=run.colour)),
                          row=row["loss"], col=1)
        lr = run.data.series.get("lr")
        resets = sorted({e["step"] for e in run.data.events
                         if e["kind"] == "momentum_reset" and isinstance(e.get("step"), int)})
        if lr and resets:
            fig.add_trace(go.Scatter(
                x=resets, y=_round([value_at(*lr, s) for s in resets]), mode="markers", name=run.group,
                showlegend=False, legendgroup=run.group, hovertemplate=f"{name}<br>momentum reset at step "
                "%{x}<extra></extra>", marker=dict(symbol="triangle-down", size=9, color=run.colour)),
                row=row["lr"], col=1)
    if "grad_norm" in row:
        fig.update_yaxes(type="log", row=row["grad_norm"], col=1)
    fig.update_xaxes(title_text="step", row=len(present), col=1)
    fig.update_layout(height=230 * len(present) + 120, hovermode="closest", template="plotly_white",
                      margin=dict(l=60, r=30, t=50, b=50),
                      legend=dict(title=dict(text="click: hide/show<br>double-click: only this"),
                                  groupclick="togglegroup"))
    return fig, any(binned for _, binned in curves)


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


def _script_json(figure: Any) -> str:
    return figure.to_json().replace("</", "<\\/")  # a JSON string may not end the <script> that holds it


def _details(run: ComparedRun, index: str) -> str:
    figure = detail_figure(run.data)
    plot = ("" if figure is None else '<div class="detail-plot"></div><script type="application/json" '
            f'class="detail-figure">{_script_json(figure)}</script>')
    views = "spike heat map, " if run.data.scores else ""
    views += "firing rates, " if any(k.startswith("firing_rate/") for k in run.data.series) else ""
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
    figure, binned = overlay_figure(runs)
    plot = ("<p>No run has logged a step yet.</p>" if figure is None else
            figure.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}))
    details = "".join(_details(r, f"{number}-{i}") for i, r in enumerate(runs))
    return (f"{heading}{_warning_lines(warnings)}{summary_table(runs)}{plot}"
            f"<h3>Each run (click to open)</h3>{details}"), binned


_COMPARE_STYLE = """.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}
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
                         "metrics.jsonl), as a list or as a mapping of section titles to lists")
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
             f"group), a run below to open its spike heat map and firing rates.{note}</p>")
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    script = resources.files("spam_opt.dashboard").joinpath("compare.js").read_text(encoding="utf-8")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>{html.escape(title)}</title><style>{STYLE}\n{_COMPARE_STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>{html.escape(title)}</h1>{intro}{_warning_lines(warnings)}{nav}{''.join(parts)}"
            f"<script>{script}</script></body></html>")
    return write_page(Path(output), page)

