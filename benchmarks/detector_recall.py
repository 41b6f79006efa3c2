"""The monitor as a detector near its threshold: recall for gradient spikes of 10x to 1000x.

    python -m benchmarks.detector_recall                  # llama-9m, 200 steps, batch 8 x 64, seeds 0..2
    python -m benchmarks.detector_recall --report-only    # the report again from finished or committed runs

The stability grid scores the monitor on 1000x spikes only, twenty times the gradient rule's threshold; here
AdamW without a clip (the trainer's monitor reads the gradient before any clip anyway) trains through the
stability grid's ``spike-tensors`` and ``spike-all`` regimes (``stability.gradient_spike_regimes``) with the
spikes scaled by each of ``--factors``. Each run is a ``grid.run_one`` run: resumable, with its commit, tree
state and trainer command in ``<out>/runs/<regime>-x<factor>/adamw/seed<k>/result.json``. The report is
``<out>/README.md`` with ``results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks import grid, grid_command, stability
from benchmarks.grid import Setup

FACTORS = (10.0, 30.0, 100.0, 1000.0)
REGIMES = ("spike-tensors", "spike-all")
VARIANTS = {"adamw": {"optimizer": "adamw"}}
LR = 1e-3  # AdamW's swept lr in the stability grid (benchmarks/results/stability/lr_sweep.md)


def regime_name(regime: str, factor: float) -> str:
    return f"{regime}-x{factor:g}"


def _regimes(args: argparse.Namespace) -> dict[str, grid.Regime]:
    # Factor-major, so that an interrupted run leaves whole factors measured rather than whole regimes.
    regimes = {}
    for factor in args.factors:
        spiked = stability.gradient_spike_regimes(factor)
        regimes |= {regime_name(r, factor): spiked[r] for r in REGIMES}
    return regimes


def thresholds() -> dict[str, float]:
    """The monitor's defaults (its gradient and loss rules) and the trainer's GSS threshold the runs used."""
    from spam_opt.monitor import GradientSpikeMonitor
    from trainers.config import TrainConfig

    defaults = inspect.signature(GradientSpikeMonitor).parameters
    trainer = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "gss_threshold")
    return {"gss_threshold": defaults["gss_threshold"].default, "trainer_gss_threshold": trainer,
            "loss_threshold": defaults["loss_threshold"].default,
            "loss_window": defaults["loss_window"].default}


def injection_scores(run_dir: Path, injections: list[tuple[int, int]]) -> list[float | None] | None:
    """Per injection, the largest gradient score (over parameters and its injected steps) the monitor logged:
    how far a spike got towards the threshold, flagged or not. None when the run's folder is not there."""
    from spam_opt import run_files

    path = run_dir / run_files.METRICS
    if not path.is_file():
        return None
    scores = {r["step"]: max(r["grad_score"].values(), default=None) for r in grid.read_rows(path)
              if "grad_score" in r}
    found = [[scores[s] for s in range(a, b + 1) if scores.get(s) is not None] for a, b in injections]
    return [max(v) if v else None for v in found]


def _with_scores(setup: Setup, result: dict[str, Any]) -> dict[str, Any]:
    run_dir = setup.out / "runs" / result["regime"] / result["optimizer"] / f"seed{result['seed']}"
    scores = injection_scores(run_dir, result["injections"])
    return result if scores is None else result | {"injection_scores": scores}


def _fraction(hits: list[bool]) -> str:
    return f"{statistics.fmean(hits):.2f} ({sum(hits)} of {len(hits)})" if hits else "n/a"


def _scores_text(runs: list[dict[str, Any]]) -> str:
    values = [s for r in runs for s in r.get("injection_scores") or [] if s is not None]
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} [{min(values):.1f}..{max(values):.1f}]"


def _worst_jump(runs: list[dict[str, Any]]) -> str:
    jumps = [j for r in runs for j in r["jump"] if j is not None]
    return f"{max(jumps):.2f}" if jumps else "n/a"


def _table(results: list[dict[str, Any]], factors: list[float]) -> list[str]:
    lines = ["| regime | factor | runs | gradient recall | loss recall | largest gradient score at the "
             "injection, median [min..max] | worst loss jump | gradient false flags | loss false flags |",
             "|---|---:|---:|---|---|---|---:|---|---|"]
    for factor in factors:
        for regime in REGIMES:
            runs = [r for r in results if r["regime"] == regime_name(regime, factor)]
            if not runs:
                continue
            grad_false = [grid.false_flags(r, "grad") for r in runs]
            loss_false = [grid.false_flags(r, "loss") for r in runs]
            lines.append(
                f"| {regime} | {factor:g}x | {len(runs)} | "
                f"{_fraction([h for r in runs for h in grid.detections(r, 'grad')])} | "
                f"{_fraction([h for r in runs for h in grid.detections(r, 'loss')])} | "
                f"{_scores_text(runs)} | {_worst_jump(runs)} | "
                f"{sum(grad_false)} in {len(runs)} runs | {sum(loss_false)} in {len(runs)} runs |")
    return lines


def _step_table(results: list[dict[str, Any]], factors: list[float]) -> list[str]:
    steps = sorted({a for r in results for a, _ in r["injections"]})
    lines = ["| factor | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for factor in factors:
        runs = [r for r in results if r["regime"] in {regime_name(g, factor) for g in REGIMES}]
        if not runs:
            continue
        cells = []
        for step in steps:
            hits = [hit for r in runs for (a, _), hit in zip(r["injections"], grid.detections(r, "grad"))
                    if a == step]
            cells.append(f"{sum(hits)} of {len(hits)}")
        lines.append(f"| {factor:g}x | " + " | ".join(cells) + " |")
    return lines


def report(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]],
           results: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    results = [_with_scores(setup, grid.with_spike_measures(r)) for r in results]
    limits = thresholds()
    gss = limits["gss_threshold"]
    trainer_note = "" if limits["trainer_gss_threshold"] == gss else (
        f" (the trainer's own default, which these runs used, is {limits['trainer_gss_threshold']:g})")
    spike_steps = stability.spike_steps(setup.steps)
    lines = [
        f"# The monitor near its threshold ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
        f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "", grid.provenance_note(results), "",
        grid.coverage_note(setup.out), "",
        f"AdamW (lr {args.lr:g}, no clip; the trainer's monitor reads the gradient before any clip), "
        f"seeds 0..{args.seeds - 1}, the monitor in tensor mode at its defaults. Each run has gradient "
        f"spikes injected at steps {', '.join(map(str, spike_steps))}, the stability grid's regimes with the "
        "spike scaled by the factor: `spike-tensors` scales the gradients of the tensors where the SPAM "
        "paper finds LLaMA's spikes (`stability.SPIKE_TENSORS`: for LLaMA the final norm, layer 0's input "
        "norm and layer 1's query projection), `spike-all` the whole gradient.", "",
        "**Thresholds.** Gradient rule: a parameter's score is its gradient norm (or largest entry) over the "
        f"mean of that value over every step so far, this one included; above {gss:g} (`gss_threshold`, "
        f"GradientSpikeMonitor's default{trainer_note}) is a spike. A score at step n is at most n, so "
        f"nothing is flagged before step {gss + 1:g}. A k-times spike on a gradient at its running mean "
        f"scores k·n / (n − 1 + k), at most {gss:g} for any k ≤ {gss:g}, however late; a gradient already r "
        f"times its running mean scores as a k·r spike would, which is how spikes of {gss:g}x or less can be "
        f"flagged. Loss rule: a loss more than {limits['loss_threshold']:g} standard deviations above the "
        f"mean of the previous {limits['loss_window']} losses (`loss_threshold`, `loss_window`), replayed "
        "over each run's logged losses with today's rule (`grid.monitor_loss_events`).", "",
        "Recall: the fraction of injections flagged (their count in brackets: "
        f"{len(stability.SPIKE_FRACTIONS)} per run), from the injected step to 2 steps after it "
        "(`grid.detections`). Largest gradient score: the largest score over parameters the monitor logged "
        "at the injected step, flagged or not. Worst loss jump: the largest rise of the training loss (nats) "
        "from the injection to 5 steps after it over the 5-step mean before it (`grid.loss_jump`), what the "
        "loss rule had to see. False flags: flags on steps with no injection, whatever their "
        "cause (`grid.false_flags`, the definition in docs/choosing.md), summed over the cell's runs.", "",
        *_table(results, list(args.factors)), "",
        "Gradient recall by injected step (both regimes and every seed): the later the step, the more "
        "steps the running mean holds, and the higher a spike of the same size scores.", "",
        *_step_table(results, list(args.factors)), ""]
    (setup.out / "README.md").write_text("\n".join(lines))
    (setup.out / "results.json").write_text(json.dumps({"thresholds": limits, "factors": list(args.factors),
                                                        "runs": results}))
    return results


def _factors(text: str) -> tuple[float, ...]:
    values = tuple(float(x) for x in text.split(",") if x)
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"invalid factors {text!r}: give positive numbers, e.g. 10,30,100")
    return values


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=LR, help="AdamW's lr (default: its stability-grid lr)")
    parser.add_argument("--factors", type=_factors, default=FACTORS,
                        help="comma-separated spike factors (default: 10,30,100,1000)")


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.lr > 0:
        parser.error(f"invalid --lr {args.lr}: it must be > 0")


GRID = grid_command.GridScript(
    "detector_recall", __doc__.splitlines()[0], steps=200, seq_len=64, rows_flag="--optimizers",
    variants=lambda args: VARIANTS, regimes=_regimes, reference="adamw", report=report,
    add_arguments=_add_arguments, fixed_lr=lambda args: args.lr, check=_check)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return grid_command.main(GRID, argv)


if __name__ == "__main__":
    main()
