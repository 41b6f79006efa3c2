"""Memory-matched comparison: optimizer-state bytes per parameter against final validation loss.

    python benchmarks/memory_grid.py                        # LLaMA grid model, 1000 steps, 3 seeds, lr sweep
    python benchmarks/memory_grid.py --quick --out /tmp/mg  # pipeline check: llama-tiny, a few steps, 1 seed

Every run is ``trainers.pretrain`` through the grids' shared runner, ``benchmarks/grid.py`` (one
``result.json`` per run, finished runs are skipped, the clean regime, each variant's lr from a sweep on
seed 0 unless ``--lrs`` gives it). GaLore's rank is the
one whose measured state comes closest to SPAM's at density 0.25. For each variant the report gives the
optimizer-state bytes per parameter measured from the optimizer's tensors after one step
(``spam_opt.state_bytes``), the optimizer step time on the run's model against torch's fused AdamW
(interleaved rounds, so run it on an idle machine), and the final validation loss over seeds; and plots
state bytes against loss with the Pareto front. Writes ``README.md``, ``results.json`` and ``pareto.png``
under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # grid.py: also when imported

import grid  # noqa: E402  (the shared runner beside this script)
from grid import Regime, Setup  # noqa: E402

from spam_opt.state_bytes import params_of, state_bytes  # noqa: E402

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


def _optimizer(setup: Setup, variant: dict[str, Any], vocab: int) -> tuple[Any, Any]:
    """A variant's model and optimizer as a run of ``setup`` builds them, after one step."""
    from trainers.config import TrainConfig

    settings = {k: v for k, v in variant.items() if k != "optimizer_kwargs"}
    own = variant.get("optimizer_kwargs", {})
    kwargs = grid.scaled_schedule(variant, setup.reset_fraction, setup.steps) | own
    cfg = TrainConfig(model=setup.model, seq_len=setup.seq_len, optimizer_kwargs=kwargs, **settings)
    return grid.stepped_optimizer(cfg, vocab)


def bytes_per_param(opt: Any) -> float:
    return state_bytes(opt) / params_of(opt)


def galore_rank(setup: Setup, variants: dict[str, dict[str, Any]], vocab: int) -> int:
    """The GaLore rank whose measured state bytes come closest to those of ``GALORE_MATCHES``.

    Sets that rank in ``variants["galore"]``.
    """
    target = bytes_per_param(_optimizer(setup, variants[GALORE_MATCHES], vocab)[1])
    model, _ = _optimizer(setup, variants[BASELINE], vocab)
    hidden = model.config.hidden_size
    best: tuple[float, int] | None = None
    for rank in sorted({r for r in range(1, hidden + 1) if r % 4 == 0 or r < 4}):
        candidate = {"optimizer": "galore", "optimizer_kwargs": {"rank": rank}}
        gap = abs(bytes_per_param(_optimizer(setup, candidate, vocab)[1]) - target)
        if best is None or gap < best[0]:
            best = (gap, rank)
    assert best is not None
    variants["galore"] = {"optimizer": "galore", "optimizer_kwargs": {"rank": best[1]}}
    return best[1]


def step_time_ratios(setup: Setup, variants: dict[str, dict[str, Any]], names: list[str], vocab: int,
                     rounds: int) -> dict[str, float]:
    """Median optimizer step time of each variant over the fused-AdamW baseline's, on the run's model.

    One step of each variant per round, so load from elsewhere hits them alike; gradients are set afresh
    before each step (some peers write into them).
    """
    runs = {name: _optimizer(setup, variants[name], vocab) for name in dict.fromkeys([BASELINE, *names])}
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


def report(setup: Setup, variants: dict[str, dict[str, Any]], results: list[dict[str, Any]],
           measures: dict[str, dict[str, float]], command: str) -> list[dict[str, Any]]:
    rows = []
    for name, m in measures.items():
        runs = [r for r in results if r["optimizer"] == name]
        losses = [r["final_eval_loss"] for r in runs if r["final_eval_loss"] is not None]
        rows.append({"variant": name, "lr": runs[0]["lr"], "seeds": len(runs), **m,
                     "val_loss": statistics.fmean(losses) if losses else None,
                     "val_loss_std": statistics.pstdev(losses) if len(losses) > 1 else 0.0,
                     "val_loss_text": grid.mean_spread(losses)})
    adamw = measures[BASELINE]["bytes_per_param"] if BASELINE in measures else None
    finite = {r["variant"]: (r["bytes_per_param"], r["val_loss"]) for r in rows if r["val_loss"] is not None}
    front = pareto_front(finite)
    lines = [f"# Memory-matched comparison ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "",
             "State: optimizer-state bytes per parameter, measured from the optimizer's tensors after one "
             "step (AdamW keeps 8). Step: median optimizer step time on this model over torch's fused "
             "AdamW's, interleaved rounds. Val loss: final validation loss, mean ± std over seeds. "
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
    if galore is not None:
        lines += ["", f"GaLore rank {galore}: the rank whose state comes closest to {GALORE_MATCHES}'s."]
    (setup.out / "README.md").write_text("\n".join(lines) + "\n")
    (setup.out / "results.json").write_text(json.dumps({"rows": rows, "runs": results, "pareto": front}))
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grid.add_setup_arguments(parser, steps=1000, seq_len=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--lrs", default="",
                        help="NAME=LR,... : learning rates to use instead of sweeping for those variants")
    parser.add_argument("--timing-rounds", type=int, default=21, help="interleaved optimizer steps to time")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/memory; with --quick, runs/smoke/memory")
    parser.add_argument("--quick", action="store_true", help="one seed, 6 steps of llama-tiny, no lr sweep")
    grid.add_report_only_argument(parser)
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: give a comma-separated list of some of {', '.join(VARIANTS)}")
    if min(args.steps, args.seeds, args.batch_size, args.seq_len, args.timing_rounds) < 1:
        parser.error("--steps, --seeds, --batch-size, --seq-len and --timing-rounds must be >= 1")
    given_lrs = grid.parse_lrs(args.lrs, list(VARIANTS), parser)
    out = Path(args.out or ("runs/smoke/memory" if args.quick else "benchmarks/results/memory"))
    if args.quick:
        args.model, args.steps, args.seeds, args.batch_size, args.seq_len = "llama-tiny", 6, 1, 2, 32
        args.corpus_mb, args.timing_rounds = 0.2, 3
    setup = Setup(args.model, args.steps, args.batch_size, args.seq_len, out, corpus_mb=args.corpus_mb,
                  seeds=args.seeds, eval_batches=2 if args.quick else grid.WHOLE_SPLIT)
    setup.out.mkdir(parents=True, exist_ok=True)
    variants = {k: dict(v) for k, v in VARIANTS.items()}
    from trainers.tokenizer import byte_tokenizer

    vocab = len(byte_tokenizer())  # the runs' tokenizer: the trainer's default, bytes
    if "galore" in names:
        print(f"GaLore rank {galore_rank(setup, variants, vocab)} (state closest to {GALORE_MATCHES})",
              flush=True)
    chosen = {n: variants[n] for n in names}
    to_sweep = [n for n in names if n not in given_lrs]
    if args.quick:
        lrs = {n: 1e-3 for n in names}
    else:
        lrs = given_lrs | (grid.sweep(setup, chosen, to_sweep, Regime(), train=not args.report_only)
                           if to_sweep else {})
    results = grid.run_grid(setup, chosen, {"clean": Regime()}, lrs, reference=names[0],
                            train=not args.report_only)
    ratios = step_time_ratios(setup, variants, names, vocab, args.timing_rounds)
    measures = {name: {"bytes_per_param": bytes_per_param(_optimizer(setup, variants[name], vocab)[1]),
                       "step_ratio": ratios[name]} for name in names}
    command = grid.command_line("memory_grid.py", argv)
    return report(setup, variants, results, measures, command)



if __name__ == "__main__":
    main()
