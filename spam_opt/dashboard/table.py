"""A comparison's summary table: one row per run, a sort key per cell (the page's script sorts by it)."""

from __future__ import annotations

import html
from typing import Any

from spam_opt.dashboard.runs import ComparedRun


def _number(value: float | None, fmt: str) -> tuple[str, Any]:
    return ("–", None) if value is None else (format(value, fmt), value)


def _size(n: int | None) -> tuple[str, Any]:
    if n is None:
        return "–", None
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}", n
    return f"{n} B", n


def _steps(run: ComparedRun) -> tuple[str, Any]:
    s = run.summary
    if s.last_step is None:
        return "–", None
    cut = s.max_steps is not None and s.last_step < s.max_steps
    return (f"{s.last_step} of {s.max_steps}" if cut else str(s.last_step)), s.last_step


def _text(value: str | None) -> tuple[str, Any]:
    return ("–", None) if value is None else (value, value)


# header, tooltip, cell (shown text, sort key; None sorts last)
COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("model", "model preset or config", lambda r: _text(r.summary.model)),
    ("optimizer", "optimizer and the options that tell runs apart", lambda r: _text(r.summary.optimizer)),
    ("quant", "low-bit training: format, group size, whether activations are quantized too",
     lambda r: _text(r.summary.quant)),
    ("steps", "last logged step (of the steps the run was set to, when it stopped short)", _steps),
    ("final eval loss", "last evaluation", lambda r: _number(r.summary.final_eval_loss, ".4f")),
    ("best eval loss", "lowest evaluation", lambda r: _number(r.summary.best_eval_loss, ".4f")),
    ("loss spikes", "losses far above their rolling mean (the monitor's loss_threshold)",
     lambda r: _number(r.summary.loss_spikes, "d")),
    ("grad spike steps", "steps where some parameter's gradient spike score passed the threshold",
     lambda r: _number(r.summary.grad_spike_steps, "d")),
    ("guard skipped", "steps the spike guard skipped (–: no guard)",
     lambda r: _number(r.summary.guard_skipped, "d")),
    ("entries clipped", "gradient entries the optimizer clipped (–: it does not clip)",
     lambda r: _number(r.summary.clipped, ",d")),
    ("momentum resets", "optimizer momentum resets", lambda r: _number(r.summary.momentum_resets, "d")),
    ("tokens/s", "median over logged steps", lambda r: _number(r.summary.tokens_per_s, ",.0f")),
    ("state", "optimizer state after the first step", lambda r: _size(r.summary.state_bytes)),
)


def _cell(text: str, key: Any, extra: str = "") -> str:
    sort = "" if key is None else html.escape(str(key), quote=True)
    return f'<td data-sort="{sort}">{extra}{html.escape(text)}</td>'


def summary_table(runs: list[ComparedRun]) -> str:
    """One row per run; the quant and group columns only when some run has them."""
    columns = [c for c in COLUMNS if c[0] != "quant" or any(r.summary.quant for r in runs)]
    grouped = any(r.ref.group for r in runs)
    head = '<th title="run directory (click any header to sort)">run</th>'
    head += '<th title="runs shown in one colour">group</th>' if grouped else ""
    head += "".join(f'<th title="{html.escape(tip)}">{html.escape(h)}</th>' for h, tip, _ in columns)
    body = []
    for i, r in enumerate(runs):
        swatch = f'<span class="swatch" style="background:{r.colour}"></span>'
        cells = [_cell(r.name, r.name, swatch)] + ([_cell(r.group, r.group)] if grouped else [])
        cells += [_cell(*cell(r)) for _, _, cell in columns]
        body.append(f'<tr data-run="{i}">{"".join(cells)}</tr>')
    return f'<table class="runs per-run"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
