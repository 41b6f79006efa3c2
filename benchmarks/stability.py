"""Stability benchmark: optimizers x regimes x seeds, each a real run of ``trainers.pretrain``.

    python benchmarks/stability.py                          # the CPU grid (results/stability/)
    python benchmarks/stability.py --quick                  # pipeline check: one seed, a few steps
    python benchmarks/stability.py --model llama-60m --steps 10000 --seq-len 256 ...   # paper scale, GPUs

Every run writes ``<out>/runs/<regime>/<optimizer>/seed<k>/result.json``; a finished run is never
repeated, so an interrupted grid continues where it stopped. Learning rates come from a short sweep
(clean regime, seed 0) whose table is written next to the results. SPAM's schedule is scaled to the run
as the paper's was to its runs (``--reset-fraction``). ``report`` rows aggregate over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw"},
    "adamw+clip1": {"optimizer": "adamw", "max_grad_norm": 1.0},
    "spam": {"optimizer": "spam"},
    "spam+clip1": {"optimizer": "spam", "max_grad_norm": 1.0},
    "spam-d0.25": {"optimizer": "spam", "density": 0.25},
    "stable-spam": {"optimizer": "stable-spam"},
    "adamw+guard": {"optimizer": "adamw", "spike_guard": True},
}
REGIMES = ("clean", "spike-tensors", "spike-all", "spike-burst", "high-lr")
# Where LLaMA's gradient spikes concentrate in the SPAM paper: norm weights; plus one attention matrix.
# SpikeGPT gets the matching tensors of its own architecture (LayerNorms and the key of one block).
SPIKE_TENSORS = {
    "llama": (r"(model\.norm\.weight|layers\.0\.input_layernorm\.weight"
              r"|layers\.1\.self_attn\.q_proj\.weight)"),
    "spikegpt": r"(ln_out\.weight|blocks\.0\.ln1\.weight|blocks\.1\.att\.key\.weight)",
}
SPIKE_FRACTIONS = (0.3, 0.5, 0.7)  # injections at these fractions of the run, 1000x each
# spike-burst: the whole model at 1000x for this many consecutive steps from each injection point. One
# scaled step is undone by a global-norm clip; a burst inflates Adam's second moments step after step.
BURST_STEPS = 5
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
SWEEP_EXTEND = 2  # extra x3 steps past an end of LR_GRID whose lr wins the sweep
HIGH_LR_FACTOR = 10.0  # high-lr regime: this times AdamW's swept lr, the same for every optimizer


@dataclass
class Setup:
    model: str
    steps: int
    batch_size: int
    seq_len: int
    out: Path
    reset_fraction: float
    corpus_mb: float
    optimizers: dict[str, dict[str, Any]] = field(default_factory=lambda: OPTIMIZERS)  # name -> trainer flags

    def spike_steps(self) -> list[int]:
        return [max(2, round(f * self.steps)) for f in SPIKE_FRACTIONS]

    def injected_steps(self, regime: str) -> list[int]:
        """Every step whose gradient the regime multiplies."""
        return [t for first, last in self.injections(regime) for t in range(first, last + 1)]

    def injections(self, regime: str) -> list[tuple[int, int]]:
        """First and last injected step of each injection."""
        if not regime.startswith("spike"):
            return []
        length = BURST_STEPS if regime == "spike-burst" else 1
        return [(t, t + length - 1) for t in self.spike_steps()]

    def optimizer_kwargs(self, name: str) -> dict[str, Any]:
        """SPAM's schedule scaled to the run: paper 500/150/20 for ~10k steps -> fractions of the run."""
        interval = max(4, round(self.reset_fraction * self.steps))
        settings = self.optimizers[name]
        own = settings.get("optimizer_kwargs", {})
        if settings["optimizer"] == "spam":
            return {"reset_interval": interval, "warmup_steps": max(1, round(0.3 * interval)),
                    "clip_delay": max(1, round(0.04 * interval)), **own}
        if settings["optimizer"] == "stable-spam":
            return {"reset_interval": 2 * interval, "total_steps": self.steps, **own}
        return dict(own)


def _argv(setup: Setup, name: str, regime: str, seed: int, lr: float, run_dir: Path) -> list[str]:
    values: dict[str, Any] = {
        "model": setup.model, "max_steps": setup.steps, "batch_size": setup.batch_size,
        "seq_len": setup.seq_len, "seed": seed, "lr": lr, "corpus_max_mb": setup.corpus_mb,
        "warmup_steps": max(1, setup.steps // 20), "eval_every": max(1, setup.steps // 4), "eval_batches": 8,
        "log_every": 1, "save_every": 0, "output_dir": str(run_dir.parent), "run_name": run_dir.name,
        "overwrite": True, "trackers": "", "dashboard": False, "progress_bar": False,
        **setup.optimizers[name],
    }
    kwargs = setup.optimizer_kwargs(name)
    if kwargs:
        values["optimizer_kwargs"] = json.dumps(kwargs)
    if regime.startswith("spike"):
        values["inject_spike_steps"] = ",".join(map(str, setup.injected_steps(regime)))
        values["inject_factor"] = 1000.0
        if regime == "spike-tensors":
            family = next((f for f in SPIKE_TENSORS if setup.model.startswith(f)), "llama")
            values["inject_pattern"] = SPIKE_TENSORS[family]
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_spikes(losses: list[float], window: int = 20, sigma: float = 6.0, floor: float = 0.1) -> list[int]:
    """Indices where the loss exceeds the mean of the previous ``window`` by max(sigma std, floor) nats."""
    spikes = []
    for t in range(window, len(losses)):
        prev = losses[t - window:t]
        mean, std = statistics.fmean(prev), statistics.pstdev(prev)
        if losses[t] > mean + max(sigma * std, floor):
            spikes.append(t)
    return spikes


def recovery_steps(steps: list[int], losses: list[float], at: int, smooth: int = 5,
                   last: int | None = None) -> int | None:
    """Steps after an injection until the ``smooth``-step mean loss is back at its prior level.

    The injection hits steps ``at``..``last`` (one step when ``last`` is None). An injected gradient acts
    on the update of its step, so the first loss that can show it is that of step ``at + 1``; the level
    before is the mean of the ``smooth`` losses up to step ``at``, and steps are counted from ``last``.
    """
    last = at if last is None else last
    index = {s: i for i, s in enumerate(steps)}
    if at not in index or last not in index or index[at] < smooth - 1:
        return None
    i0 = index[at]
    baseline = statistics.fmean(losses[i0 - smooth + 1:i0 + 1])
    for i in range(index[last] + 1, len(losses) - smooth + 1):
        if statistics.fmean(losses[i:i + smooth]) <= baseline:
            return steps[i] - last
    return None


def loss_jump(steps: list[int], losses: list[float], at: int, smooth: int = 5,
              last: int | None = None) -> float | None:
    """Largest loss from step ``at + 1`` to ``smooth`` steps after ``last``, minus the mean before ``at``."""
    last = at if last is None else last
    index = {s: i for i, s in enumerate(steps)}
    if at not in index or last not in index or index[at] < smooth - 1:
        return None
    i0 = index[at]
    return max(losses[i0 + 1:index[last] + 1 + smooth]) - statistics.fmean(losses[i0 - smooth + 1:i0 + 1])


def run_optimizer(run_dir: Path) -> tuple[Any, Any]:
    """The model and optimizer of a finished run, rebuilt from its saved config, after one step."""
    import torch

    from trainers.config import from_dict, read_yaml
    from trainers.models import build_model
    from trainers.optimizers import build_optimizer

    cfg = from_dict(read_yaml(run_dir / "config.yaml"))
    vocab = json.loads((run_dir / "final" / "config.json").read_text())["vocab_size"]
    model = build_model(cfg.model, vocab, cfg.seq_len)
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return model, opt


def optimizer_state_bytes(run_dir: Path) -> int:
    """Bytes of optimizer state after one step of the run's model with that run's optimizer config."""
    import torch

    _, opt = run_optimizer(run_dir)
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t))


def run_one(setup: Setup, name: str, regime: str, seed: int, lr: float, run_dir: Path) -> dict[str, Any]:
    result_path = run_dir / "result.json"
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        if done["lr"] == lr:  # the same run; a changed sweep outcome reruns it
            return done
    from trainers.pretrain import main

    started = time.perf_counter()
    main(_argv(setup, name, regime, seed, lr, run_dir))
    wall = time.perf_counter() - started
    rows = _rows(run_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval_loss" not in r]
    evals = [r for r in rows if "eval_loss" in r]
    result = {
        "optimizer": name, "regime": regime, "seed": seed, "lr": lr,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_eval_ppl": evals[-1]["eval_ppl"] if evals else None,
        "state_bytes": optimizer_state_bytes(run_dir),
        "wall_s": wall,
        "curve": train,
    }
    result_path.write_text(json.dumps(result))
    return result


def _sweep_loss(setup: Setup, name: str, lr: float) -> float:
    res = run_one(setup, name, "clean", 0, lr, setup.out / "sweep" / name / f"lr{lr:g}")
    loss = res["final_eval_loss"]
    return loss if loss is not None and math.isfinite(loss) else math.inf


def sweep(setup: Setup, names: list[str], lrs: tuple[float, ...]) -> dict[str, float]:
    """Best clean-regime lr per optimizer (seed 0), by final validation loss.

    When the best lr is at an end of the grid, the sweep goes on past that end (x3 per step, at most
    SWEEP_EXTEND steps): an optimum at the edge of the grid is not an optimum.
    """
    best: dict[str, float] = {}
    all_scores: dict[str, dict[float, float]] = {}
    for name in names:
        scores = {lr: _sweep_loss(setup, name, lr) for lr in lrs}
        for _ in range(SWEEP_EXTEND):
            chosen, grid = min(scores, key=scores.get), sorted(scores)
            if chosen not in (grid[0], grid[-1]):
                break
            lr = float(f"{chosen * 3 if chosen == grid[-1] else chosen / 3:.3g}")
            scores[lr] = _sweep_loss(setup, name, lr)
        best[name] = min(scores, key=scores.get)
        all_scores[name] = scores
    columns = sorted({lr for scores in all_scores.values() for lr in scores})
    table = ["| optimizer | " + " | ".join(f"lr {lr:g}" for lr in columns) + " | chosen |",
             "|---" * (len(columns) + 2) + "|"]
    for name, scores in all_scores.items():
        cells = " | ".join(f"{scores[lr]:.4f}" if lr in scores else "" for lr in columns)
        table.append(f"| {name} | {cells} | {best[name]:g} |")
    intro = ("Final validation loss of the clean regime, seed 0. The grid is extended past an end whose lr "
             f"wins (x3 per step, up to {SWEEP_EXTEND} steps); empty cells were not run.\n\n")
    (setup.out / "lr_sweep.md").write_text(intro + "\n".join(table) + "\n")
    return best


def _recovery_text(values: list[int | None]) -> str:
    """Median and longest recovery over injections x seeds; a run that never recovered counts as longest."""
    steps = [math.inf if v is None else v for v in values]
    text = lambda x: "never" if x == math.inf else f"{x:g}"
    never = sum(v is None for v in values)
    return f"{text(statistics.median(steps))} / {text(max(steps))}" + (f" ({never} never)" if never else "")


def _mean_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


_TABLE_HEADER = ("| optimizer | lr | val loss | val ppl | loss spikes | recovery steps (median / longest) "
                 "| worst jump | state MB | wall s |")


def spike_measures(setup: Setup, result: dict[str, Any]) -> dict[str, Any]:
    """Loss spikes, and recovery and loss jump per injection, from a run's training-loss curve."""
    steps = [s for s, _ in result["curve"]]
    losses = [v if v is not None and math.isfinite(v) else math.inf for _, v in result["curve"]]
    injected = setup.injections(result["regime"])
    return {"loss_spikes": len(loss_spikes([v for v in losses if math.isfinite(v)])),
            "recovery": [recovery_steps(steps, losses, t, last=end) for t, end in injected],
            "jump": [loss_jump(steps, losses, t, last=end) for t, end in injected]}


def report(setup: Setup, results: list[dict[str, Any]], command: str) -> None:
    results = [r | spike_measures(setup, r) for r in results]
    lines = [f"# Stability benchmark ({setup.model}, {setup.steps} steps, batch {setup.batch_size} x "
             f"{setup.seq_len} tokens)", "", f"Command: `{command}`", "",
             "Mean ± std over seeds. Loss spikes: training-loss jumps of more than max(6 std, 0.1 nats) over "
             "the previous 20 steps (mean per run). Recovery: median and longest, over injections x seeds, "
             "of the steps until the 5-step mean loss is back at its mean over the 5 steps up to the "
             f"injection, counted from its last injected step (spike-burst: {BURST_STEPS} consecutive "
             "steps). Worst jump: largest loss rise (nats) from the injection to 5 steps after it. State: "
             "optimizer state MB after one step, measured when this report is written.", ""]
    # Measured now rather than read from result.json: a run recorded by an older version of the library
    # would report that version's state layout. Optimizer state does not depend on the regime.
    state_mb = {}
    for r in results:
        if r["optimizer"] not in state_mb:
            run_dir = setup.out / "runs" / r["regime"] / r["optimizer"] / f"seed{r['seed']}"
            state_mb[r["optimizer"]] = optimizer_state_bytes(run_dir) / 2**20
    for regime in REGIMES:
        rows = [r for r in results if r["regime"] == regime]
        if not rows:
            continue
        lines += [f"## {regime}", "", _TABLE_HEADER, "|---" * 9 + "|"]
        for name in OPTIMIZERS:
            runs = [r for r in rows if r["optimizer"] == name]
            if not runs:
                continue
            rec = [v for r in runs for v in r["recovery"]]
            rec_text = _recovery_text(rec) if rec else "n/a"
            jumps = [v for r in runs for v in r["jump"] if v is not None]
            jump_text = f"{max(jumps):.2f}" if jumps else "n/a"
            lines.append(
                f"| {name} | {runs[0]['lr']:g} | {_mean_spread([r['final_eval_loss'] for r in runs])} | "
                f"{_mean_spread([r['final_eval_ppl'] for r in runs])} | "
                f"{statistics.fmean([r['loss_spikes'] for r in runs]):.1f} | {rec_text} | {jump_text} | "
                f"{state_mb[name]:.2f} | "
                f"{statistics.fmean([r['wall_s'] for r in runs]):.0f} |")
        lines.append("")
    (setup.out / "README.md").write_text("\n".join(lines))
    (setup.out / "results.json").write_text(json.dumps(results))
    _plot(setup, results)


def _plot(setup: Setup, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if any(x["regime"] == r for x in results)]
    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for name in OPTIMIZERS:
            runs = [r for r in results if r["regime"] == regime and r["optimizer"] == name]
            if not runs:
                continue
            steps = [s for s, _ in runs[0]["curve"]]
            curves = [[v for _, v in r["curve"]] for r in runs if len(r["curve"]) == len(steps)]
            mean = [statistics.fmean(vals) for vals in zip(*curves)]
            ax.plot(steps, mean, label=name, linewidth=1)
            spikes = loss_spikes(mean)
            ax.scatter([steps[i] for i in spikes], [mean[i] for i in spikes], marker="x", s=20)
        if regime.startswith("spike"):
            for t in setup.spike_steps():
                ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(regime)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(setup.out / "loss_curves.png", dpi=110)
    plt.close(fig)


def add_setup_arguments(parser: argparse.ArgumentParser, steps: int, out: str) -> None:
    """A grid's command line: its runs' model, length, batch and corpus, seeds, SPAM's reset fraction, the
    output folder, and --quick. ``setup_from`` reads them back."""
    parser.add_argument("--model", default="llama-9m")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corpus-mb", type=float, default=2.0)
    parser.add_argument("--reset-fraction", type=float, default=1 / 20,
                        help="SPAM reset interval as a fraction of the run (paper: 500 of ~10k steps)")
    parser.add_argument("--out", default=out)
    parser.add_argument("--quick", action="store_true", help="one seed, 6 steps of llama-tiny, no lr sweep")


def setup_from(args: argparse.Namespace, optimizers: dict[str, dict[str, Any]] | None = None) -> Setup:
    """The ``Setup`` of ``add_setup_arguments``' arguments (--quick overrides them), its folder created."""
    if args.quick:
        args.model, args.steps, args.seeds, args.batch_size, args.seq_len = "llama-tiny", 6, 1, 2, 32
        args.corpus_mb = 0.2
    setup = Setup(args.model, args.steps, args.batch_size, args.seq_len, Path(args.out), args.reset_fraction,
                  args.corpus_mb, optimizers if optimizers is not None else OPTIMIZERS)
    setup.out.mkdir(parents=True, exist_ok=True)
    return setup


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_arguments(parser, steps=300, out="benchmarks/results/stability")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--regimes", default=",".join(REGIMES))
    args = parser.parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n]
    regimes = [r for r in args.regimes.split(",") if r]
    for bad in [n for n in names if n not in OPTIMIZERS] + [r for r in regimes if r not in REGIMES]:
        parser.error(f"unknown optimizer or regime {bad!r}; known: {', '.join([*OPTIMIZERS, *REGIMES])}")
    setup = setup_from(args)
    lrs = {n: 1e-3 for n in names} if args.quick else sweep(setup, names, LR_GRID)
    high_lr = HIGH_LR_FACTOR * lrs.get("adamw", 1e-3)
    results = []
    for regime in regimes:
        for seed in range(args.seeds):
            for name in names:
                lr = high_lr if regime == "high-lr" else lrs[name]
                run_dir = setup.out / "runs" / regime / name / f"seed{seed}"
                results.append(run_one(setup, name, regime, seed, lr, run_dir))
                loss = results[-1]["final_eval_loss"]
                print(f"{regime:14s} {name:12s} seed {seed}: val loss {loss}", flush=True)
    command = "python benchmarks/stability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report(setup, results, command.strip())
    return results


if __name__ == "__main__":
    main()
