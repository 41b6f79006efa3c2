"""Low-bit stability grid: 4-bit (INT4, FP4) fake-quantized training, where spikes arise by themselves.

    python benchmarks/lowbit.py --model llama-9m --steps 1000 --out benchmarks/results/lowbit
    python benchmarks/lowbit.py --model spikegpt-1m --lr 1e-2 --out benchmarks/results/lowbit_spikegpt
    python benchmarks/lowbit.py --quick                    # pipeline check, in runs/smoke/lowbit

Nothing is injected: the spikes are whatever 4-bit training produces. Rows: AdamW in full precision (the
reference), and with the block linears fake-quantized (``trainers.quant``, weights and activations, group
``--group-size``): AdamW, AdamW + norm clipping, SPAM, SPAM + norm clipping, Stable-SPAM, AdamW + spike guard
in INT4, and AdamW, SPAM and Stable-SPAM in FP4. Regimes: ``natural`` (the grid's lr with warmup) and
``harsh`` (INT4 at ``--harsh-lr-factor`` times that lr, without LR warmup). Every run writes one
``result.json`` and a finished run is never repeated (``grid.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid  # noqa: E402  (the shared runner beside this script)
from grid import Regime, Setup  # noqa: E402

REFERENCE = "fp32 adamw"
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
        "harsh": Regime(lambda setup, steps: {"warmup_steps": 0}, lr_factor=harsh_factor,
                        variants=tuple(INT4_VARIANTS)),
    }


# The Stable-SPAM paper, Table 1: INT4 (weights and activations) LLaMA-130M on C4, final perplexity.
PAPER_INT4_130M = [("BF16 Adam", 24.53), ("Adam", 26.4), ("Adam + clip", 26.30), ("SPAM", 25.03),
                   ("Stable-SPAM", 24.33)]
# Our row for each of the paper's (our reference trains in float32 where the paper's is BF16).
PAPER_ROWS = {"BF16 Adam": REFERENCE, "Adam": "int4 adamw", "Adam + clip": "int4 adamw+clip1",
              "SPAM": "int4 spam", "Stable-SPAM": "int4 stable-spam"}


def _monitor_counts(result: dict[str, Any]) -> tuple[int, int]:
    return len(result["loss_events"]), len(result["grad_events"])


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


def report(setup: Setup, results: list[dict[str, Any]], names: list[str], command: str, noise: str) -> None:
    results = [grid.with_spike_measures(r) for r in results]
    reference_speed = [r["tokens_per_s"] for r in results if r["optimizer"] == REFERENCE]
    lines = [f"# Low-bit stability grid ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "",
             "Mean ± std over seeds; no injected spikes. Val loss: the whole validation split at the end "
             f"({noise}). Loss / gradient spikes: the monitor's events per run (loss: its current rule, 6 "
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
        lines += [f"## {regime}", "", "| variant | lr | val loss | val ppl | loss spikes | gradient spikes "
                  "| worst jump | diverged | tokens/s vs fp32 |", "|---" * 9 + "|"]
        for name in names:
            runs = [r for r in rows if r["optimizer"] == name]
            if not runs:
                continue
            counts = [_monitor_counts(r) for r in runs]
            diverged = sum(r["final_eval_loss"] is None or r["final_eval_loss"] != r["final_eval_loss"]
                           for r in runs)
            speed = (statistics.median(r["tokens_per_s"] for r in runs) / statistics.median(reference_speed)
                     if reference_speed else float("nan"))
            lines.append(
                f"| {name} | {runs[0]['lr']:g} | {grid.mean_spread([r['final_eval_loss'] for r in runs])} | "
                f"{grid.mean_spread([r['final_eval_ppl'] for r in runs], 2)} | "
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grid.add_setup_arguments(parser, steps=1000, seq_len=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="every variant's lr in the natural regime")
    parser.add_argument("--harsh-lr-factor", type=float, default=10.0)
    parser.add_argument("--group-size", type=int, default=32,
                        help="quantization group along each linear's input (32 divides the grid models)")
    parser.add_argument("--variants", default="", help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--regimes", default="natural,harsh")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/lowbit; with --quick, runs/smoke/lowbit")
    parser.add_argument("--quick", action="store_true", help="one seed, 6 steps of llama-tiny")
    grid.add_report_only_argument(parser)
    args = parser.parse_args(argv)
    table = variants(args.group_size)
    names = [n for n in args.variants.split(",") if n] or list(table)
    chosen = [r for r in args.regimes.split(",") if r]
    all_regimes = regimes(args.harsh_lr_factor)
    for flag, given, known in (("--variants", names, table), ("--regimes", chosen, all_regimes)):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            parser.error(f"{flag}: give a comma-separated list of some of {', '.join(known)}")
    if min(args.steps, args.seeds, args.batch_size, args.seq_len, args.group_size) < 1 or args.lr <= 0:
        parser.error("--steps, --seeds, --batch-size, --seq-len and --group-size must be >= 1, --lr > 0")
    out = Path(args.out or ("runs/smoke/lowbit" if args.quick else "benchmarks/results/lowbit"))
    if args.quick:
        args.model, args.steps, args.seeds, args.batch_size, args.seq_len = "llama-tiny", 6, 1, 2, 32
        args.corpus_mb, args.group_size = 0.2, 16
        table = variants(args.group_size)
    setup = Setup(args.model, args.steps, args.batch_size, args.seq_len, out, corpus_mb=args.corpus_mb,
                  seeds=args.seeds, eval_batches=2 if args.quick else grid.WHOLE_SPLIT)
    setup.out.mkdir(parents=True, exist_ok=True)
    lrs = {name: args.lr for name in table}
    results = grid.run_grid(setup, {n: table[n] for n in names}, {r: all_regimes[r] for r in chosen}, lrs,
                            reference=REFERENCE, train=not args.report_only)
    command = grid.command_line("lowbit.py", argv)
    report(setup, results, names, command, grid.noise_note(setup.out))
    return results


if __name__ == "__main__":
    main()
