"""One cell of the SpikeGPT stability grid trained twice: on the C++ kernels and on the reference paths.

    python -m benchmarks.spikegpt_kernel_cell        # clean, SPAM, seed 0, the grid's shape (200 steps)

The kernels replace SpikeGPT's per-token loops; they agree with the reference paths to float32 rounding step
by step (tests/test_spikegpt_kernels.py). Over a whole run such differences can grow, so this trains the
same cell both ways and reports how far the runs end apart, beside the evaluation's own noise and the seed
spread of the committed grid. Writes ``<out>/kernel_cell.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

from benchmarks import grid, stability


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="spam", choices=list(stability.OPTIMIZERS))
    parser.add_argument("--lr", type=float, default=1e-2, help="the SpikeGPT grid's swept lr")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/stability_spikegpt")
    args = parser.parse_args(argv)
    from trainers.models.spikegpt_kernels import backend

    out = Path(args.out)
    setup = grid.Setup("spikegpt-1m", args.steps, 8, 64, out)
    variant = stability.OPTIMIZERS[args.variant]
    clean = stability.REGIMES["clean"]
    runs = {}
    for path in ("kernels", "reference"):
        run_dir = out / "runs" / "kernel_cell" / path / f"{args.variant}-seed{args.seed}"  # ignored by git
        with backend("reference") if path == "reference" else nullcontext():
            runs[path] = grid.run_one(setup, args.variant, variant, "clean", clean, args.seed, args.lr,
                                      run_dir)
    k, r = runs["kernels"], runs["reference"]
    gaps = [abs(a[1] - b[1]) for a, b in zip(k["curve"], r["curve"])]
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m benchmarks.spikegpt_kernel_cell", *given])
    lines = [f"# One SpikeGPT grid cell on the kernels and on the reference paths ({args.variant}, clean, "
             f"seed {args.seed}, {args.steps} steps)", "",
             f"Command: `{command}`", "",
             "| path | final validation loss | tokens/s (median) |", "|---|---:|---:|",
             f"| C++ kernels | {k['final_eval_loss']:.4f} | {k['tokens_per_s']:,.0f} |",
             f"| reference paths | {r['final_eval_loss']:.4f} | {r['tokens_per_s']:,.0f} |", "",
             f"Difference of the final losses: {abs(k['final_eval_loss'] - r['final_eval_loss']):.4f} nats. "
             f"Training losses: equal to {gaps[0]:.2g} at step 1, largest gap {max(gaps):.3g}, median gap "
             f"{statistics.median(gaps):.3g} over the run ({grid.noise_note(out)})."]
    (out / "kernel_cell.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
