"""Stability benchmark: optimizers x spike regimes x seeds, each a real run of ``trainers.pretrain``.

    python -m benchmarks.stability --steps 200 --batch-size 8 --seq-len 64           # the LLaMA grid
    python -m benchmarks.stability --model spikegpt-1m ... --out benchmarks/results/stability_spikegpt
    python -m benchmarks.stability --quick                  # pipeline check: one seed, a few steps, in runs/
    python -m benchmarks.stability --model llama-60m --steps 10000 --seq-len 256 ...   # paper scale, GPUs

Regimes: clean training; 1000x gradient spikes on a few tensors, on the whole model, in 5-step bursts, and on
0.1% of the entries of every weight matrix (the per-entry spikes the SPAM paper measures, which a global-norm
clip can only tame by scaling the whole gradient down); degenerate batches made from random tokens (the spike
comes from the data through the model); a high learning rate; and clean training 10x longer. Every run writes
``<out>/runs/<regime>/<optimizer>/seed<k>/result.json`` and a finished run is never repeated (see
``grid.py``); the report is ``<out>/README.md`` with ``results.json``, ``loss_curves.png`` and
``comparison.html``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from benchmarks import grid, grid_command
from benchmarks.grid import Regime, Setup

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw"},
    "adamw+clip1": {"optimizer": "adamw", "max_grad_norm": 1.0},
    "adamw+zclip": {"optimizer": "adamw", "zclip": True},
    "spam": {"optimizer": "spam"},
    "spam+clip1": {"optimizer": "spam", "max_grad_norm": 1.0},
    "spam-d0.25": {"optimizer": "spam", "density": 0.25},
    "stable-spam": {"optimizer": "stable-spam"},
    "adamw+guard": {"optimizer": "adamw", "spike_guard": True},
}
# Where LLaMA's gradient spikes concentrate in the SPAM paper: norm weights; plus one attention matrix.
# SpikeGPT gets the matching tensors of its own architecture (LayerNorms and the key of one block).
SPIKE_TENSORS = {
    "llama": (r"(model\.norm\.weight|layers\.0\.input_layernorm\.weight"
              r"|layers\.1\.self_attn\.q_proj\.weight)"),
    "spikegpt": r"(ln_out\.weight|blocks\.0\.ln1\.weight|blocks\.1\.att\.key\.weight)",
}
# Every weight matrix: embeddings, projections and the head.
MATRICES = {
    "llama": r"(embed_tokens|proj|lm_head)\.weight$",
    "spikegpt": r"(emb|key|value|receptance|output|head)\.weight$",
}
SPIKE_FRACTIONS = (0.3, 0.5, 0.7)  # injections at these fractions of the run
FACTOR = 1000.0
ENTRY_FRACTION = 1e-3  # entry-spikes: this fraction of each matrix's entries, 1000x each
# spike-burst: the whole model at 1000x for this many consecutive steps from each injection point. One
# scaled step is undone by a global-norm clip; a burst inflates Adam's second moments step after step.
BURST_STEPS = 5
HIGH_LR_FACTOR = 10.0  # high-lr regime: this times AdamW's swept lr, the same for every optimizer
LONG_FACTOR = 10  # long regime: this many times the grid's steps
LONG_VARIANTS = ("adamw", "adamw+clip1", "adamw+zclip", "spam", "stable-spam")


def spike_steps(steps: int) -> list[int]:
    return [max(2, round(f * steps)) for f in SPIKE_FRACTIONS]


def _family(setup: Setup) -> str:
    return next((f for f in SPIKE_TENSORS if setup.model.startswith(f)), "llama")


def _injected(length: int) -> Any:
    return lambda setup, steps: [(t, t + length - 1) for t in spike_steps(steps)]


def _steps_of(injections: list[tuple[int, int]]) -> list[int]:
    return [t for first, last in injections for t in range(first, last + 1)]


def _spikes(length: int = 1, pattern: dict[str, str] | None = None, fraction: float = 1.0,
            factor: float = FACTOR) -> Any:
    def options(setup: Setup, steps: int) -> dict[str, Any]:
        values: dict[str, Any] = {"inject_spike_steps": _steps_of(_injected(length)(setup, steps)),
                                  "inject_factor": factor}
        if pattern is not None:
            values["inject_pattern"] = pattern[_family(setup)]
        if fraction < 1:
            values["inject_fraction"] = fraction
        return values

    return options


def gradient_spike_regimes(factor: float = FACTOR) -> dict[str, Regime]:
    """The regimes that inject gradient spikes, at ``factor`` times the gradient (``detector_recall.py``
    measures the monitor at smaller factors than this grid's)."""
    return {
        "spike-tensors": Regime(_spikes(pattern=SPIKE_TENSORS, factor=factor), _injected(1),
                                injection_kind="gradient"),
        "spike-all": Regime(_spikes(factor=factor), _injected(1), injection_kind="gradient"),
        "spike-burst": Regime(_spikes(BURST_STEPS, factor=factor), _injected(BURST_STEPS),
                              injection_kind="gradient"),
        "entry-spikes": Regime(_spikes(pattern=MATRICES, fraction=ENTRY_FRACTION, factor=factor),
                               _injected(1), injection_kind="gradient"),
    }


REGIMES: dict[str, Regime] = {
    "clean": Regime(),
    **gradient_spike_regimes(),
    "bad-batch": Regime(lambda setup, steps: {"bad_batch_steps": spike_steps(steps), "bad_batch": "random"},
                        _injected(1), injection_kind="data"),
    "high-lr": Regime(lr_factor=HIGH_LR_FACTOR),
    "long": Regime(steps_factor=LONG_FACTOR, variants=LONG_VARIANTS, seeds=2),
}

_TABLE_HEADER = ("| optimizer | lr | val loss | val loss − adamw's, paired | val ppl | loss spikes "
                 "| recovery steps (median / longest) | worst jump | state MB | wall s |")


def _regime_table(results: list[dict[str, Any]], regime: str, state_mb: dict[str, float]) -> list[str]:
    lines = [f"## {regime}", "", _TABLE_HEADER, "|---" * 10 + "|"]
    reference = [r for r in results if r["regime"] == regime and r["optimizer"] == "adamw"]
    for name in OPTIMIZERS:
        runs = [r for r in results if r["regime"] == regime and r["optimizer"] == name]
        if not runs:
            continue
        rec = [v for r in runs for v in r["recovery"]]
        jumps = [v for r in runs for v in r["jump"] if v is not None]
        paired = "" if name == "adamw" else grid.paired_difference(runs, reference)
        lines.append(
            f"| {name} | {runs[0]['lr']:g} | {grid.mean_spread([r['final_eval_loss'] for r in runs])} | "
            f"{paired} | {grid.mean_spread([r['final_eval_ppl'] for r in runs], 2)} | "
            f"{statistics.fmean([r['loss_spikes'] for r in runs]):.1f} | "
            f"{grid.recovery_text(rec) if rec else 'n/a'} | {f'{max(jumps):.2f}' if jumps else 'n/a'} | "
            f"{state_mb[name]:.2f} | {statistics.fmean([r['wall_s'] for r in runs]):.0f} |")
    return lines + [""]


def _clipped(name: str) -> bool:
    """Whether the trainer clips this variant's gradient before the monitor reads it."""
    return bool(OPTIMIZERS[name].get("max_grad_norm") or OPTIMIZERS[name].get("zclip"))


def _recall(runs: list[dict[str, Any]], kind: str) -> str:
    hits = [hit for r in runs for hit in grid.detections(r, kind)]
    return f"{statistics.fmean(hits):.2f} ({len(hits)})" if hits else "n/a"


def _detector_table(results: list[dict[str, Any]]) -> list[str]:
    """The monitor as a detector: injections it flagged (recall) and its flags on clean runs."""
    lines = ["## The monitor as a detector", "",
             "Recall: the fraction of injections (over optimizers x seeds; their number in brackets) that "
             "the monitor flagged, from the first injected step to 2 steps after the last, as a gradient "
             "spike (any parameter's score above its threshold, as logged) or as a loss spike (the monitor's "
             "current loss rule replayed over the run's logged losses). These runs were trained while the "
             "trainer's monitor still read the gradient after the clip: for the variants with a norm clip or "
             "ZClip that is the clipped gradient, so their gradient recall is given apart (the trainer now "
             "observes before the clip). False flags: flags on steps with no injection, whatever their "
             "cause (the definition in docs/choosing.md), over every run of the grid.", "",
             "| regime | gradient recall, unclipped | gradient recall, clipped | loss recall |",
             "|---|---|---|---|"]
    for regime_name, regime in REGIMES.items():
        runs = [r for r in results if r["regime"] == regime_name]
        if not runs or not regime.injection_kind:
            continue
        raw = [r for r in runs if not _clipped(r["optimizer"])]
        clipped = [r for r in runs if _clipped(r["optimizer"])]
        lines.append(f"| {regime_name} | {_recall(raw, 'grad')} | {_recall(clipped, 'grad')} | "
                     f"{_recall(runs, 'loss')} |")
    lines += ["", "| regime | runs | steps | gradient false flags | loss false flags |",
              "|---|---:|---:|---:|---:|"]
    for regime_name in REGIMES:
        runs = [r for r in results if r["regime"] == regime_name]
        if runs:
            lines.append(f"| {regime_name} | {len(runs)} | {sum(r['steps'] for r in runs)} | "
                         f"{sum(grid.false_flags(r, 'grad') for r in runs)} | "
                         f"{sum(grid.false_flags(r, 'loss') for r in runs)} |")
    steps = sum(r["steps"] for r in results)
    grad_flags = sum(grid.false_flags(r, "grad") for r in results)
    loss_flags = sum(grid.false_flags(r, "loss") for r in results)
    lines.append(f"| all | {len(results)} | {steps} | {grad_flags} | {loss_flags} |")
    return lines + [""]


def report(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]],
           results: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    results = [grid.with_spike_measures(r) for r in results]
    lines = [f"# Stability benchmark ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "", grid.provenance_note(results), "",
             f"{grid.SPREAD_NOTE} Val loss − adamw's: the difference to AdamW's run of the same seed, mean ± "
             "sample std over the seeds both have (the spread that says whether a difference holds over "
             "seeds). Val loss: the whole validation split at the end of the run "
             f"({grid.noise_note(setup.out)}). Loss spikes: training-loss jumps of more than max(6 std, 0.1 "
             "nats) over the previous 20 steps (mean per run). Recovery: median and longest, over "
             "injections x seeds, of the steps until the 5-step mean loss is back at its mean over the 5 "
             "steps up to the injection, counted from its last injected step (spike-burst: "
             f"{BURST_STEPS} consecutive steps). Worst jump: largest loss rise (nats) from the injection to "
             "5 steps after it. State: optimizer state MB after one step, measured when this report is "
             f"written. {grid.load_note(results)}.", "",
             grid.coverage_note(setup.out), ""]
    # Measured now rather than read from result.json: a run recorded by an older version of the library
    # would report that version's state layout. Optimizer state does not depend on the regime.
    from spam_opt.state_bytes import state_bytes

    state_mb = {name: state_bytes(grid.variant_optimizer(setup, variants[name])[1]) / 2**20
                for name in dict.fromkeys(r["optimizer"] for r in results)}
    for regime in REGIMES:
        if any(r["regime"] == regime for r in results):
            lines += _regime_table(results, regime, state_mb)
    lines += _detector_table(results)
    (setup.out / "README.md").write_text("\n".join(lines))
    (setup.out / "results.json").write_text(json.dumps(results))
    grid.plot_curves(setup.out, results, list(REGIMES), list(OPTIMIZERS))
    grid.write_comparison(setup.out, results, list(REGIMES),
                          title=f"Stability benchmark ({setup.model}, {setup.steps} steps)")
    return results


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--monitor-mode", choices=("tensor", "element"), default="tensor")


GRID = grid_command.GridScript(
    "stability", __doc__.splitlines()[0], steps=300, seq_len=128, rows_flag="--optimizers",
    variants=lambda args: OPTIMIZERS, regimes=lambda args: REGIMES, reference="adamw", report=report,
    add_arguments=_add_arguments,
    setup_extra=lambda args: {"monitor_mode": args.monitor_mode} if args.monitor_mode != "tensor" else {})


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return grid_command.main(GRID, argv)


if __name__ == "__main__":
    main()
