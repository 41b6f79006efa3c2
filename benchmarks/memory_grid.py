"""Memory-matched comparison: optimizer-state bytes per parameter against final validation loss.

    python -m benchmarks.memory_grid                        # LLaMA grid model, 1000 steps, 3 seeds, lr sweep
    python -m benchmarks.memory_grid --quick --out /tmp/mg  # pipeline check: llama-tiny, a few steps, 1 seed

Every run is ``trainers.pretrain`` through the grids' shared runner, ``benchmarks/grid.py`` (one
``result.json`` per run, finished runs are skipped, the clean regime, each variant's lr from a sweep on
seed 0 unless ``--lrs`` gives it). GaLore's rank is the
one whose measured state comes closest to SPAM's at density 0.25. For each variant the report gives the
optimizer-state bytes per parameter measured from the optimizer's tensors after one step
(``spam_opt.state_bytes``), the optimizer step time on the run's model against torch's fused AdamW
(interleaved rounds inside ``machine_load.watch``, which waits for an idle machine and says in the report
whether it was; ``--report-only`` keeps the committed step column and its provenance, ``--report-only
--retime`` times it again without training), and the final
validation loss over seeds; and plots
state bytes against loss with the Pareto front. Writes ``README.md``, ``results.json`` and ``pareto.png``
under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from benchmarks import grid, grid_command, provenance
from benchmarks.grid import Regime, Setup
from benchmarks.machine_load import add_wait_argument, watch
from spam_opt.state_bytes import params_of, state_bytes

# name -> trainer flags. Names are run directories. GaLore's rank is added by galore_rank().
VARIANTS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw"},
    "adamw8bit-bnb": {"optimizer": "adamw8bit"},
    "adamw8bit-torchao": {"optimizer": "torchao-adamw8bit"},
    "galore": {"optimizer": "galore"},
    "adam-mini": {"optimizer": "adam-mini"},
    "spam-d0.25": {"optimizer": "spam", "density": 0.25},
    "spam-d0.25-8bit": {"optimizer": "spam", "density": 0.25, "state_bits": 8},
    "spam-8bit": {"optimizer": "spam", "state_bits": 8},
    "stable-spam-8bit": {"optimizer": "stable-spam", "state_bits": 8},
}
BASELINE = "adamw"  # the trainer's AdamW is torch's fused one on CPU and CUDA
GALORE_MATCHES = "spam-d0.25"


def bytes_per_param(opt: Any) -> float:
    return state_bytes(opt) / params_of(opt)


def galore_rank(setup: Setup, variants: dict[str, dict[str, Any]]) -> int:
    """The GaLore rank whose measured state bytes come closest to those of ``GALORE_MATCHES``.

    Sets that rank in ``variants["galore"]``.
    """
    target = bytes_per_param(grid.variant_optimizer(setup, variants[GALORE_MATCHES])[1])
    model, _ = grid.variant_optimizer(setup, variants[BASELINE])
    hidden = model.config.hidden_size
    best: tuple[float, int] | None = None
    for rank in sorted({r for r in range(1, hidden + 1) if r % 4 == 0 or r < 4}):
        candidate = {"optimizer": "galore", "optimizer_kwargs": {"rank": rank}}
        gap = abs(bytes_per_param(grid.variant_optimizer(setup, candidate)[1]) - target)
        if best is None or gap < best[0]:
            best = (gap, rank)
    assert best is not None
    variants["galore"] = {"optimizer": "galore", "optimizer_kwargs": {"rank": best[1]}}
    return best[1]


def step_time_ratios(setup: Setup, variants: dict[str, dict[str, Any]], names: list[str],
                     rounds: int) -> dict[str, float]:
    """Median optimizer step time of each variant over the fused-AdamW baseline's, on the run's model.

    One step of each variant per round, so load from elsewhere hits them alike; gradients are set afresh
    before each step (some peers write into them).
    """
    runs = {name: grid.variant_optimizer(setup, variants[name]) for name in dict.fromkeys([BASELINE, *names])}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, opt) in runs.items():
            for p in model.parameters():
                p.grad.normal_(0.0, 1e-3)
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[BASELINE])
    return {name: statistics.median(t) / base for name, t in times.items()}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (bytes, loss) no other point beats in both (ties in one, better in the other count)."""
    front = []
    for name, (b, loss) in points.items():
        dominated = any((b2 <= b and l2 <= loss) and (b2 < b or l2 < loss)
                        for other, (b2, l2) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def timing(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]], names: list[str],
           command: str) -> dict[str, Any]:
    """The step column with its provenance: measured now inside ``machine_load.watch``, or, with
    ``--report-only``, the committed one where it holds every row (an older one without its provenance says
    so)."""
    path = setup.out / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if args.report_only and not args.retime and isinstance(saved, dict):
        ratios = {r["variant"]: r["step_ratio"] for r in saved.get("rows", [])}
        if all(n in ratios for n in names):
            return saved.get("timing", {"ratios": ratios, "provenance": (
                "provenance not recorded: the step column was measured before "
                f"{provenance.RECORDED_SINCE} without a record of its commit or of the machine's load")}) | {
                "ratios": ratios}
    with watch(args.max_wait) as load:
        ratios = step_time_ratios(setup, variants, names, args.timing_rounds)
    return {"ratios": ratios, **provenance.source(), "command": command,
            "provenance": provenance.timing_line(load.summary())}


def report(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]],
           results: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    names = [n for n in variants if any(r["optimizer"] == n for r in results)]
    times = timing(setup, args, variants, names, command)
    rows = []
    for name in names:
        runs = [r for r in results if r["optimizer"] == name]
        losses = [r["final_eval_loss"] for r in runs if r["final_eval_loss"] is not None]
        rows.append({"variant": name, "lr": runs[0]["lr"], "seeds": len(runs),
                     "bytes_per_param": bytes_per_param(grid.variant_optimizer(setup, variants[name])[1]),
                     "step_ratio": times["ratios"][name],
                     "val_loss": statistics.fmean(losses) if losses else None,
                     "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                     "val_loss_text": grid.mean_spread(losses)})
    adamw = next((r["bytes_per_param"] for r in rows if r["variant"] == BASELINE), None)
    finite = {r["variant"]: (r["bytes_per_param"], r["val_loss"]) for r in rows if r["val_loss"] is not None}
    front = pareto_front(finite)
    seeds = max(r["seeds"] for r in rows)
    spread = (f"{grid.SPREAD_NOTE} Val loss: final validation loss, the whole validation split "
              f"({grid.noise_note(setup.out)})" if seeds > 1 else
              "Val loss: final validation loss, the whole validation split, one seed: no spread over seeds "
              f"({grid.noise_note(setup.out)}; two rows closer than about twice that are not told apart)")
    lines = [f"# Memory-matched comparison ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "", grid.provenance_note(results), "",
             "State: optimizer-state bytes per parameter, measured from the optimizer's tensors after one "
             "step (AdamW keeps 8). Step: median optimizer step time on this model over torch's fused "
             f"AdamW's, interleaved rounds. Step column: {times['provenance'].rstrip('.')}. {spread}. "
             "Pareto: no other variant has both less state and a lower loss.", "",
             grid.coverage_note(setup.out), "",
             "| variant | lr | state B/param | x AdamW state | step x fused AdamW | val loss | Pareto |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for r in sorted(rows, key=lambda r: r["bytes_per_param"]):
        ratio = f"{r['bytes_per_param'] / adamw:.3f}" if adamw else "n/a"
        pareto = "yes" if r["variant"] in front else ""
        lines.append(f"| {r['variant']} | {r['lr']:g} | {r['bytes_per_param']:.3f} | {ratio} | "
                     f"{r['step_ratio']:.2f} | {r['val_loss_text']} | {pareto} |")
    galore = variants.get("galore", {}).get("optimizer_kwargs", {}).get("rank")
    if galore is not None and "galore" in names:
        lines += ["", f"GaLore rank {galore}: the rank whose state comes closest to {GALORE_MATCHES}'s."]
    (setup.out / "README.md").write_text("\n".join(lines) + "\n")
    (setup.out / "results.json").write_text(json.dumps({"rows": rows, "runs": results, "pareto": front,
                                                        "timing": times}))
    _plot(setup, rows, front)
    return rows


def _plot(setup: Setup, rows: list[dict[str, Any]], front: list[str]) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["val_loss"] is None:
            continue
        spam = r["variant"].startswith("spam")
        ax.errorbar(r["bytes_per_param"], r["val_loss"], yerr=r["val_loss_std"], fmt="o" if spam else "s",
                    color="tab:red" if spam else "tab:blue", capsize=3)
        ax.annotate(r["variant"], (r["bytes_per_param"], r["val_loss"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    points = sorted((r["bytes_per_param"], r["val_loss"]) for r in rows if r["variant"] in front)
    if points:
        ax.step(*zip(*points), where="post", color="grey", linestyle=":", linewidth=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([0.5, 1, 2, 4, 8])
    ax.set_xlabel("optimizer state, bytes per parameter (log scale)")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{setup.model}, {setup.steps} steps: state against loss")
    fig.tight_layout()
    fig.savefig(setup.out / "pareto.png", dpi=110)
    plt.close(fig)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timing-rounds", type=int, default=21, help="interleaved optimizer steps to time")
    parser.add_argument("--retime", action="store_true",
                        help="with --report-only: time the step column again (on an idle machine) instead of "
                             "keeping the committed one")
    add_wait_argument(parser)


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.timing_rounds < 1:
        parser.error(f"invalid --timing-rounds {args.timing_rounds}: it must be at least 1")


def _prepare(setup: Setup, args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> None:
    print(f"GaLore rank {galore_rank(setup, variants)} (state closest to {GALORE_MATCHES})", flush=True)


GRID = grid_command.GridScript(
    "memory_grid", __doc__.splitlines()[0], steps=1000, seq_len=64, rows_flag="--variants",
    variants=lambda args: VARIANTS, regimes=lambda args: {"clean": Regime()}, reference=BASELINE,
    report=report, results_name="memory", add_arguments=_add_arguments,
    quick={"timing_rounds": 3, "max_wait": 0}, prepare=_prepare, check=_check)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return grid_command.main(GRID, argv)


if __name__ == "__main__":
    main()
