"""Low-bit stability grid: 4-bit (INT4, FP4) fake-quantized training, where spikes arise by themselves.

    python -m benchmarks.lowbit --model llama-9m --steps 1000 --out benchmarks/results/lowbit
    python -m benchmarks.lowbit --model spikegpt-1m --lr 1e-2 --out benchmarks/results/lowbit_spikegpt
    python -m benchmarks.lowbit --quick                    # pipeline check, in runs/smoke/lowbit

Nothing is injected: the spikes are whatever 4-bit training produces. Rows: AdamW in full precision (the
reference), and with the block linears fake-quantized (``trainers.quant``, weights and activations, group
``--group-size``): AdamW, AdamW + norm clipping, SPAM, SPAM + norm clipping, Stable-SPAM, AdamW + spike guard
in INT4, and AdamW, SPAM and Stable-SPAM in FP4. Regimes: ``natural`` (the grid's lr with warmup) and
``harsh`` (INT4 at ``--harsh-lr-factor`` times that lr, without LR warmup). Every run writes one
``result.json`` and a finished run is never repeated (``grid.py``). Nothing being injected, every flag of
the monitor is a false flag by the grids' one definition (``grid.false_flags``, docs/choosing.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from benchmarks import grid, grid_command
from benchmarks.grid import Regime, Setup

REFERENCE = "fp32 adamw"
HARSH_REFERENCE = "int4 adamw"  # the harsh regime trains INT4 rows only
INT4_VARIANTS: dict[str, dict[str, Any]] = {
    "int4 adamw": {"optimizer": "adamw"},
    "int4 adamw+clip1": {"optimizer": "adamw", "max_grad_norm": 1.0},
    "int4 spam": {"optimizer": "spam"},
    "int4 spam+clip1": {"optimizer": "spam", "max_grad_norm": 1.0},
    "int4 stable-spam": {"optimizer": "stable-spam"},
    "int4 adamw+guard": {"optimizer": "adamw", "spike_guard": True},
}
FP4_VARIANTS: dict[str, dict[str, Any]] = {
    "fp4 adamw": {"optimizer": "adamw"},
    "fp4 spam": {"optimizer": "spam"},
    "fp4 stable-spam": {"optimizer": "stable-spam"},
}


def variants(group_size: int) -> dict[str, dict[str, Any]]:
    quant = lambda fmt: {"quant": fmt, "quant_group_size": group_size, "quant_activations": True}
    return ({REFERENCE: {"optimizer": "adamw"}}
            | {name: options | quant("int4") for name, options in INT4_VARIANTS.items()}
            | {name: options | quant("fp4") for name, options in FP4_VARIANTS.items()})


def regimes(harsh_factor: float) -> dict[str, Regime]:
    return {
        "natural": Regime(),
        "harsh": Regime(lambda setup, steps: {"lr_warmup_steps": 0}, lr_factor=harsh_factor,
                        variants=tuple(INT4_VARIANTS)),
    }


# The Stable-SPAM paper, Table 1: INT4 (weights and activations) LLaMA-130M on C4, final perplexity.
PAPER_INT4_130M = [("BF16 Adam", 24.53), ("Adam", 26.4), ("Adam + clip", 26.30), ("SPAM", 25.03),
                   ("Stable-SPAM", 24.33)]
# Our row for each of the paper's (our reference trains in float32 where the paper's is BF16).
PAPER_ROWS = {"BF16 Adam": REFERENCE, "Adam": "int4 adamw", "Adam + clip": "int4 adamw+clip1",
              "SPAM": "int4 spam", "Stable-SPAM": "int4 stable-spam"}


def _monitor_counts(result: dict[str, Any]) -> tuple[int, int]:
    return grid.false_flags(result, "loss"), grid.false_flags(result, "grad")


def _worst_jump(result: dict[str, Any]) -> float:
    """Largest one-step rise of the training loss after the first 5% of the run (the early fall aside)."""
    losses = [v for _, v in result["curve"]]
    start = max(1, len(losses) // 20)
    rises = [b - a for a, b in zip(losses[start - 1:], losses[start:]) if a == a and b == b]
    return max(rises, default=float("nan"))


def _orderings(results: list[dict[str, Any]]) -> list[str]:
    """The paper's rows best first, and ours (the natural regime's mean perplexity) under the same names."""
    paper = sorted(PAPER_INT4_130M, key=lambda row: row[1])
    lines = ["- Stable-SPAM paper, Table 1 (INT4 LLaMA-130M on C4, perplexity, best first): "
             + " < ".join(f"{name} {ppl}" for name, ppl in paper) + "."]
    ours = []
    for name, _ in paper:
        ppls = [r["final_eval_ppl"] for r in results if r["regime"] == "natural" and r["optimizer"] ==
                PAPER_ROWS[name] and r["final_eval_ppl"] is not None]
        if ppls:
            ours.append((statistics.fmean(ppls), f"{name} ({PAPER_ROWS[name]}) {statistics.fmean(ppls):.2f}"))
    if ours:
        lines.append("- This grid, natural regime (mean validation perplexity, best first; the paper's BF16 "
                     "Adam is our fp32 AdamW): " + " < ".join(text for _, text in sorted(ours)) + ".")
    return lines


def report(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]],
           results: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    results = [grid.with_spike_measures(r) for r in results]
    names = [n for n in variants if any(r["optimizer"] == n for r in results)]
    reference_speed = [r["tokens_per_s"] for r in results if r["optimizer"] == REFERENCE]
    lines = [f"# Low-bit stability grid ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "", grid.provenance_note(results), "",
             f"{grid.SPREAD_NOTE} No injected spikes. Val loss − reference's: the difference to the "
             f"reference run of the same seed ({REFERENCE} in the natural regime, {HARSH_REFERENCE} in the "
             "harsh one), mean ± sample std over seeds. Val loss: the whole validation split at the end "
             f"({grid.noise_note(setup.out)}). Loss / gradient false flags: the monitor's flags per run; "
             "nothing is injected, so every flag is a false flag by the grids' definition (a flag on a step "
             "with no injection, whatever its cause; docs/choosing.md) (loss: its current rule, 6 "
             "sample deviations above the last 20 losses, replayed over the logged losses; gradient: a "
             "parameter's Gradient Spike Score above 50, as logged). "
             "Worst jump: the largest one-step rise of the training loss after the first 5% of the run, over "
             "seeds. Diverged: runs whose final loss is not finite. Tokens/s: median over the run's logging "
             f"steps, against the full-precision reference in the same grid ({grid.load_note(results)}; "
             "benchmarks/quant_cost.py measures the cost of fake quantization on an idle machine).", "",
             grid.coverage_note(setup.out), ""]
    for regime in ("natural", "harsh"):
        rows = [r for r in results if r["regime"] == regime]
        if not rows:
            continue
        reference_name = REFERENCE if regime == "natural" else HARSH_REFERENCE
        reference = [r for r in rows if r["optimizer"] == reference_name]
        lines += [f"## {regime}", "", "| variant | lr | val loss | val loss − reference's, paired | val ppl "
                  "| loss false flags | gradient false flags | worst jump | diverged | tokens/s vs fp32 |",
                  "|---" * 10 + "|"]
        for name in names:
            runs = [r for r in rows if r["optimizer"] == name]
            if not runs:
                continue
            paired = "" if name == reference_name else grid.paired_difference(runs, reference)
            counts = [_monitor_counts(r) for r in runs]
            diverged = sum(r["final_eval_loss"] is None or r["final_eval_loss"] != r["final_eval_loss"]
                           for r in runs)
            speed = (statistics.median(r["tokens_per_s"] for r in runs) / statistics.median(reference_speed)
                     if reference_speed else float("nan"))
            lines.append(
                f"| {name} | {runs[0]['lr']:g} | {grid.mean_spread([r['final_eval_loss'] for r in runs])} | "
                f"{paired} | {grid.mean_spread([r['final_eval_ppl'] for r in runs], 2)} | "
                f"{statistics.fmean(c[0] for c in counts):.1f} | "
                f"{statistics.fmean(c[1] for c in counts):.1f} | "
                f"{max(_worst_jump(r) for r in runs):.2f} | {diverged} / {len(runs)} | {speed:.2f} |")
        lines.append("")
    lines += ["## The paper's ordering beside ours", "", *_orderings(results), ""]
    (setup.out / "README.md").write_text("\n".join(lines))
    (setup.out / "results.json").write_text(json.dumps(results))
    grid.plot_curves(setup.out, results, ["natural", "harsh"], names)
    grid.write_comparison(setup.out, results, ["natural", "harsh"],
                          title=f"Low-bit grid ({setup.model}, {setup.steps} steps)")
    return results


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=1e-3, help="every variant's lr in the natural regime")
    parser.add_argument("--harsh-lr-factor", type=float, default=10.0)
    parser.add_argument("--group-size", type=int, default=32,
                        help="quantization group along each linear's input (32 divides the grid models)")


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.group_size < 1 or args.lr <= 0 or args.harsh_lr_factor <= 0:
        parser.error("--group-size must be >= 1, --lr and --harsh-lr-factor > 0")


GRID = grid_command.GridScript(
    "lowbit", __doc__.splitlines()[0], steps=1000, seq_len=64, rows_flag="--variants",
    variants=lambda args: variants(args.group_size), regimes=lambda args: regimes(args.harsh_lr_factor),
    reference=REFERENCE, report=report, add_arguments=_add_arguments, fixed_lr=lambda args: args.lr,
    quick={"group_size": 16}, check=_check)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return grid_command.main(GRID, argv)


if __name__ == "__main__":
    main()
