"""A grid of training runs, variants x regimes x seeds, each a real run of ``trainers.pretrain``.

The grid scripts (``stability.py``, ``lowbit.py``, ``memory_grid.py``) say what their variants (trainer
options per row: optimizer, clipping, quantization, ...) and regimes (what is done to a run: injections, a
high LR, a longer run) are; ``grid_command.py`` is their one command line; this module runs them and
measures what they share:

- every run writes ``<out>/runs/<regime>/<variant>/seed<k>/result.json`` with the commit, the state of the
  tree and the trainer command it ran with; a finished run is never repeated, so an interrupted grid continues
  where it stopped (run it again with the same command), and ``--report-only`` writes the report from the
  finished runs, or from the committed ``results.json`` where the run folders are not there;
- learning rates come from a short sweep (clean regime, seed 0) written next to the results, or are given;
- SPAM's and Stable-SPAM's schedules are scaled to the run as the papers' were to theirs (``reset_fraction``);
- the validation loss is measured once, at the end, on the whole validation split (``eval_noise.py`` measures
  how much a smaller evaluation would wobble), and the monitor's spike events are kept per run, so that the
  monitor can be scored as a detector against the known injection steps.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import provenance

# Validation batches of a final evaluation: more than any grid's split holds, so the whole split is used.
WHOLE_SPLIT = 100_000
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
SWEEP_EXTEND = 2  # extra x3 steps past an end of LR_GRID whose lr wins the sweep
GRADIENT_KINDS = ("grad_norm", "grad_max", "element_gss")


@dataclass
class Setup:
    """What every run of a grid shares."""

    model: str
    steps: int
    batch_size: int
    seq_len: int
    out: Path
    reset_fraction: float = 1 / 20
    corpus_mb: float = 2.0
    seeds: int = 3
    extra: dict[str, Any] = field(default_factory=dict)  # trainer options for every run (e.g. quantization)
    eval_batches: int = WHOLE_SPLIT  # validation batches of the final evaluation (smoke tests take a few)
    # Documents held out of training to choose lrs on (the sweep then ranks by their loss, not validation's);
    # 0: the older grids' way, lrs chosen on the validation split the tables report.
    tune_fraction: float = 0.0


@dataclass(frozen=True)
class Regime:
    """What a regime does to a run.

    ``options(setup, steps)`` gives extra trainer options; ``injections(setup, steps)`` the (first, last)
    injected steps, for recovery measures and the detector scores. ``lr_factor`` sets every variant's lr to
    this many times the reference variant's swept lr (a high-LR regime); ``steps_factor`` lengthens the runs;
    ``variants`` and ``seeds`` restrict the regime to fewer rows or seeds.
    """

    options: Callable[[Setup, int], dict[str, Any]] = lambda setup, steps: {}
    injections: Callable[[Setup, int], list[tuple[int, int]]] = lambda setup, steps: []
    lr_factor: float | None = None
    steps_factor: int = 1
    variants: tuple[str, ...] | None = None
    seeds: int | None = None
    injection_kind: str | None = None  # "gradient" or "data": which detector the injections test


def scaled_schedule(options: dict[str, Any], reset_fraction: float, steps: int) -> dict[str, Any]:
    """SPAM's and Stable-SPAM's schedules scaled to the run: paper 500/150/20 for ~10k steps."""
    interval = max(4, round(reset_fraction * steps))
    if options.get("optimizer") == "spam":
        return {"reset_interval": interval, "warmup_steps": max(1, round(0.3 * interval)),
                "clip_delay": max(1, round(0.04 * interval))}
    if options.get("optimizer") == "stable-spam":
        return {"reset_interval": 2 * interval, "total_steps": steps}
    return {}


def trainer_argv(setup: Setup, variant: dict[str, Any], regime: Regime, seed: int, lr: float,
                 run_dir: Path) -> list[str]:
    steps = setup.steps * regime.steps_factor
    values: dict[str, Any] = {
        "model": setup.model, "max_steps": steps, "batch_size": setup.batch_size, "seq_len": setup.seq_len,
        "seed": seed, "lr": lr, "corpus_max_mb": setup.corpus_mb, "lr_warmup_steps": max(1, steps // 20),
        "eval_every": steps, "eval_batches": setup.eval_batches, "log_every": 1, "save_every": 0,
        "output_dir": str(run_dir.parent), "run_name": run_dir.name, "overwrite": True, "trackers": "",
        "dashboard": False, "progress_bar": False,
        **setup.extra, **variant, **regime.options(setup, steps),
    }
    if setup.tune_fraction:
        values["tune_fraction"] = setup.tune_fraction
    kwargs = scaled_schedule(values, setup.reset_fraction, steps) | dict(values.pop("optimizer_kwargs", {}))
    if kwargs:
        values["optimizer_kwargs"] = json.dumps(kwargs)
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def parse_lrs(text: str, known: Sequence[str], parser: Any) -> dict[str, float]:
    """``NAME=LR,...`` (the grid scripts' ``--lrs``) as a dict; bad items end in ``parser.error``."""
    lrs = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            lrs[name] = float(value)
        except ValueError:
            parser.error(f"invalid --lrs item {item!r}: give NAME=LR pairs, e.g. adamw=1e-3,spam=1e-3")
        if name not in known or lrs[name] <= 0:
            parser.error(f"invalid --lrs item {item!r}: NAME is one of {', '.join(known)}, LR > 0")
    return lrs


def read_rows(path: Path) -> list[dict[str, Any]]:
    from spam_opt.monitor.jsonl import read_jsonl

    return read_jsonl(path)[0]


def stepped_optimizer(cfg: Any, vocab: int) -> tuple[Any, Any]:
    """The model and optimizer a run with trainer config ``cfg`` builds, after one step on small gradients."""
    import torch

    from trainers.models import build_model
    from trainers.optimizers import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg.model, vocab, cfg.seq_len)
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return model, opt


def variant_optimizer(setup: Setup, variant: dict[str, Any], vocab: int | None = None) -> tuple[Any, Any]:
    """A variant's model and optimizer as a run of ``setup`` builds them, after one step.

    ``vocab`` defaults to the runs' tokenizer, the trainer's default: bytes.
    """
    from trainers.config import TrainConfig

    if vocab is None:
        from trainers.tokenizer import byte_tokenizer

        vocab = len(byte_tokenizer())
    settings = {k: v for k, v in variant.items() if k != "optimizer_kwargs"}
    kwargs = scaled_schedule(variant, setup.reset_fraction, setup.steps) | variant.get("optimizer_kwargs", {})
    cfg = TrainConfig(model=setup.model, seq_len=setup.seq_len, optimizer_kwargs=kwargs, **settings)
    return stepped_optimizer(cfg, vocab)


def optimizer_state_bytes(run_dir: Path) -> int:
    """Bytes of optimizer state after one step of the run's model with that run's optimizer config."""
    from spam_opt import run_files
    from spam_opt.state_bytes import state_bytes
    from trainers.config import from_dict, read_yaml

    cfg = from_dict(read_yaml(run_dir / run_files.CONFIG))
    vocab = json.loads((run_dir / run_files.FINAL / "config.json").read_text())["vocab_size"]
    return state_bytes(stepped_optimizer(cfg, vocab)[1])


def run_one(setup: Setup, name: str, variant: dict[str, Any], regime_name: str, regime: Regime, seed: int,
            lr: float, run_dir: Path) -> dict[str, Any]:
    """Train one run (or read it back, when it finished before with this lr)."""
    result_path = run_dir / "result.json"
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        if done["lr"] == lr:  # the same run; a changed sweep outcome reruns it
            return done
    from spam_opt import run_files
    from trainers.pretrain import main

    steps = setup.steps * regime.steps_factor
    started = time.perf_counter()
    main(trainer_argv(setup, variant, regime, seed, lr, run_dir))
    wall = time.perf_counter() - started
    rows = read_rows(run_dir / run_files.METRICS)
    evals = [r for r in rows if "eval_loss" in r]
    events = read_rows(run_dir / run_files.SPIKES)
    result = {
        "optimizer": name, "regime": regime_name, "seed": seed, "lr": lr, "steps": steps,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_eval_ppl": evals[-1]["eval_ppl"] if evals else None,
        "final_tune_loss": evals[-1].get(run_files.TUNE_LOSS) if evals else None,
        "state_bytes": optimizer_state_bytes(run_dir),
        "wall_s": wall,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows if "tokens_per_s" in r),
        "load_average": os.getloadavg()[0],
        "curve": [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval_loss" not in r],
        "grad_events": sorted({e["step"] for e in events if e["kind"] in GRADIENT_KINDS}),
        "loss_events": sorted({e["step"] for e in events if e["kind"] == "loss"}),
        "injections": regime.injections(setup, steps),
    }
    # a run's losses depend on its thread count (SpikeGPT's reductions split differently), so record it
    result |= provenance.source() | {
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", "-m", "trainers.pretrain",
                             *map(shlex.quote, trainer_argv(setup, variant, regime, seed, lr, run_dir))])}
    result_path.write_text(json.dumps(result))
    return result


def sweep_pending(scores: dict[float, float], lrs: Sequence[float] = LR_GRID) -> list[float]:
    """The lrs a sweep must still run, given the losses it has: the grid's missing ones; then, while the best
    is at an end of what ran, one more past that end (x3, at most ``SWEEP_EXTEND``); ``[]`` when settled.

        >>> sweep_pending({3e-4: 3.0, 1e-3: 2.9, 3e-3: 2.8, 1e-2: 2.7})
        [0.03]
    """
    missing = [lr for lr in lrs if lr not in scores]
    if missing:
        return missing
    chosen, ran = min(scores, key=scores.get), sorted(scores)
    if len(scores) - len(lrs) >= SWEEP_EXTEND or chosen not in (ran[0], ran[-1]):
        return []
    return [float(f"{chosen * 3 if chosen == ran[-1] else chosen / 3:.3g}")]


def sweep(setup: Setup, variants: dict[str, dict[str, Any]], names: Sequence[str], clean: Regime,
          lrs: tuple[float, ...] = LR_GRID, train: bool = True) -> dict[str, float]:
    """Best clean-regime lr per variant (seed 0), by final loss; writes ``lr_sweep.md``.

    The loss is the tuning split's when the setup holds one out (``tune_fraction``), else validation's.

    When the best lr is at an end of the grid, the sweep goes on past that end (x3 per step, at most
    SWEEP_EXTEND steps): an optimum at the edge of the grid is not an optimum.
    """

    def loss_at(name: str, lr: float) -> float:
        if not train and not _finished(setup.out / "sweep" / name / f"lr{lr:g}", lr):
            raise SystemExit(f"error: --report-only: the lr sweep of {name} has not finished (lr {lr:g}); "
                             "give its lr with --lrs or run the grid without --report-only")
        res = run_one(setup, name, variants[name], "clean", clean, 0, lr,
                      setup.out / "sweep" / name / f"lr{lr:g}")
        loss = res["final_tune_loss" if setup.tune_fraction else "final_eval_loss"]
        return loss if loss is not None and math.isfinite(loss) else math.inf

    best: dict[str, float] = {}
    all_scores: dict[str, dict[float, float]] = {}
    for name in names:
        scores: dict[float, float] = {}
        while pending := sweep_pending(scores, lrs):
            scores |= {lr: loss_at(name, lr) for lr in pending}
        best[name] = min(scores, key=scores.get)
        all_scores[name] = scores
    columns = sorted({lr for scores in all_scores.values() for lr in scores})
    table = ["| variant | " + " | ".join(f"lr {lr:g}" for lr in columns) + " | chosen |",
             "|---" * (len(columns) + 2) + "|"]
    for name, scores in all_scores.items():
        cells = " | ".join(f"{scores[lr]:.4f}" if lr in scores else "" for lr in columns)
        table.append(f"| {name} | {cells} | {best[name]:g} |")
    split = "tuning split (documents held out of training and validation)" if setup.tune_fraction \
        else "validation split"
    intro = (f"Final loss on the {split} of the clean regime, seed 0. The grid is extended past an end "
             f"whose lr wins (x3 per step, up to {SWEEP_EXTEND} steps); empty cells were not run.\n\n")
    (setup.out / "lr_sweep.md").write_text(intro + "\n".join(table) + "\n")
    return best


def committed_runs(out: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The runs of the grid's committed ``results.json`` by (regime, variant, seed); empty when none."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    runs = saved["runs"] if isinstance(saved, dict) else saved
    return {(r["regime"], r["optimizer"], r["seed"]): r for r in runs}


def run_grid(setup: Setup, variants: dict[str, dict[str, Any]], regimes: dict[str, Regime],
             lrs: dict[str, float], reference: str, train: bool = True) -> list[dict[str, Any]]:
    """Every (regime, seed, variant) run, in an order that fills every table a little at a time.

    With ``train=False`` nothing is trained: the finished runs are read back (from their run folders, else
    from the committed ``results.json``), and the ones not yet trained are listed in ``missing.md`` (also
    written, empty of runs, when the grid is complete).
    """
    results, missing = [], []
    committed = {} if train else committed_runs(setup.out)
    for regime_name, regime in regimes.items():
        names = [n for n in variants if regime.variants is None or n in regime.variants]
        for seed in range(min(setup.seeds, regime.seeds or setup.seeds)):
            for name in names:
                lr = lrs[name] if regime.lr_factor is None else regime.lr_factor * lrs[reference]
                run_dir = setup.out / "runs" / regime_name / name / f"seed{seed}"
                saved = committed.get((regime_name, name, seed))
                if not train and not _finished(run_dir, lr):
                    if saved is not None and saved["lr"] == lr:
                        results.append(saved)
                    else:
                        missing.append(f"{regime_name} / {name} / seed {seed}")
                    continue
                results.append(run_one(setup, name, variants[name], regime_name, regime, seed, lr, run_dir))
                loss = results[-1]["final_eval_loss"]
                print(f"{regime_name:14s} {name:16s} seed {seed}: val loss {loss}", flush=True)
    total = len(results) + len(missing)
    lines = [f"{len(results)} of {total} runs of this grid have finished; the tables use those."]
    if missing:
        lines += ["", "Not yet trained (rerun the grid's command to train them; finished runs are skipped):",
                  ""]
        lines += [f"- {m}" for m in missing]
    (setup.out / "missing.md").write_text("\n".join(lines) + "\n")
    return results


def _finished(run_dir: Path, lr: float) -> bool:
    path = run_dir / "result.json"
    return path.is_file() and json.loads(path.read_text())["lr"] == lr


def coverage_note(out: Path) -> str:
    """The first line of ``missing.md``: how many of the grid's runs the tables use."""
    path = out / "missing.md"
    if not path.is_file():
        return ""
    first = path.read_text().splitlines()[0]
    return first if "have finished" not in first or first.split()[0] == first.split()[2] else (
        f"**{first}** The runs not yet trained are listed in missing.md.")


# -- measures -----------------------------------------------------------------------------------------


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


def detections(result: dict[str, Any], kind: str, after: int = 2) -> list[bool]:
    """Per injection, whether the monitor flagged it: a ``kind`` event ("grad" or "loss") from its first
    injected step to ``after`` steps past its last (a loss shows an update's harm a step later)."""
    flagged = set(result[f"{kind}_events"])
    return [any(first <= s <= last + after for s in flagged) for first, last in result["injections"]]


def false_flags(result: dict[str, Any], kind: str, after: int = 2) -> int:
    """The run's false flags of ``kind``: its flags on steps with no injection, whatever their cause.

    A step has an injection from an injection's first step to ``after`` steps past its last (the window
    :func:`detections` credits); every other flag is false, in clean, high-lr, long and low-bit runs alike.
    The one definition every grid report uses (stated in docs/choosing.md).
    """
    return sum(not any(first <= s <= last + after for first, last in result["injections"])
               for s in result[f"{kind}_events"])



SPREAD_NOTE = ("Mean ± sample standard deviation (n - 1) over seeds, then [min..max] of the seeds; with 2 or "
               "3 seeds the std is a rough guide, the range shows every seed's place.")


def mean_spread(values: Sequence[float | None], digits: int = 4) -> str:
    """``mean ± sample std [min..max]`` of the finite values, and how many diverged."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "diverged"
    diverged = len(values) - len(finite)
    note = f" ({diverged} diverged)" if diverged else ""
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}{note}"
    return (f"{statistics.fmean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f} "
            f"[{min(finite):.{digits}f}..{max(finite):.{digits}f}]{note}")


def paired_difference(runs: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]],
                      digits: int = 3) -> str:
    """Final validation loss minus the reference's, paired by seed: ``mean ± sample std (n seeds)``.

    Pairing by seed takes out what the seeds share (data order, initial weights), so this spread, not the
    two rows' own spreads, says whether the difference holds over seeds.
    """
    by_seed = {r["seed"]: r["final_eval_loss"] for r in reference}
    diffs = [r["final_eval_loss"] - by_seed[r["seed"]] for r in runs
             if by_seed.get(r["seed"]) is not None and r["final_eval_loss"] is not None
             and math.isfinite(r["final_eval_loss"] - by_seed[r["seed"]])]
    if not diffs:
        return "n/a"
    if len(diffs) == 1:
        return f"{diffs[0]:+.{digits}f} (1 seed)"
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    return f"{mean:+.{digits}f} ± {std:.{digits}f} ({len(diffs)} seeds)"


def recovery_text(values: list[int | None]) -> str:
    """Median and longest recovery over injections x seeds; a run that never recovered counts as longest."""
    steps = [math.inf if v is None else v for v in values]
    text = lambda x: "never" if x == math.inf else f"{x:g}"
    never = sum(v is None for v in values)
    return f"{text(statistics.median(steps))} / {text(max(steps))}" + (f" ({never} never)" if never else "")


def monitor_loss_events(curve: Sequence[tuple[int, float]]) -> list[int]:
    """The steps the monitor's loss rule flags, with its current defaults, replayed over a logged curve.

    The grids' runs span library versions (the monitor's loss window went from 128 to 20 losses); replaying
    the rule over every run's logged losses scores them all with the rule users get now.
    """
    import inspect

    import torch

    from spam_opt.monitor import GradientSpikeMonitor
    from spam_opt.outliers import RollingOutliers, default_min_history

    defaults = inspect.signature(GradientSpikeMonitor).parameters
    window, sigma = defaults["loss_window"].default, defaults["loss_threshold"].default
    rule, min_history, flagged = RollingOutliers(window), default_min_history(window), []
    for step, loss in curve:
        if loss is not None and bool(rule.observe(torch.tensor(float(loss)), sigma, min_history)[1]):
            flagged.append(step)
    return flagged


def with_spike_measures(result: dict[str, Any]) -> dict[str, Any]:
    """A result with its loss spikes, the monitor's loss flags replayed with today's rule, and recovery and
    loss jump per injection, from its training curve."""
    steps = [s for s, _ in result["curve"]]
    losses = [v if v is not None and math.isfinite(v) else math.inf for _, v in result["curve"]]
    return result | {
        "loss_events": monitor_loss_events(result["curve"]),
        "loss_spikes": len(loss_spikes([v for v in losses if math.isfinite(v)])),
        "recovery": [recovery_steps(steps, losses, t, last=end) for t, end in result["injections"]],
        "jump": [loss_jump(steps, losses, t, last=end) for t, end in result["injections"]],
    }


# -- outputs ------------------------------------------------------------------------------------------


def plot_curves(out: Path, results: list[dict[str, Any]], regimes: Sequence[str], variants: Sequence[str],
                filename: str = "loss_curves.png") -> None:
    """Training loss (mean over seeds, log scale) per regime, one line per variant, injections dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in regimes if any(x["regime"] == r for x in results)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    # One colour per variant in every panel, so that the first panel's legend reads for all of them.
    palette = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    colour = {name: palette(i) for i, name in enumerate(variants)}
    labelled: set[str] = set()
    for ax, regime in zip(axes[0], shown):
        for name in variants:
            runs = [r for r in results if r["regime"] == regime and r["optimizer"] == name]
            if not runs:
                continue
            steps = [s for s, _ in runs[0]["curve"]]
            curves = [[v for _, v in r["curve"]] for r in runs if len(r["curve"]) == len(steps)]
            mean = [statistics.fmean(vals) for vals in zip(*curves)]
            ax.plot(steps, mean, label=name, linewidth=1, color=colour[name])
        for first, _ in runs[0]["injections"] if runs else []:
            ax.axvline(first, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(regime)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_yscale("log")
        names = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
        if names - labelled:  # a panel with a variant no earlier legend names gets its own
            ax.legend(fontsize=7)
            labelled |= names
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)


def write_comparison(out: Path, results: list[dict[str, Any]], regimes: Sequence[str], title: str) -> None:
    """``comparison.html``: every run's curves and spikes, a section per regime, a variant's seeds grouped.

    Written only when every run's folder is there (not for a report from a committed ``results.json``).
    """
    from spam_opt import run_files
    from spam_opt.dashboard import RunRef, render_comparison

    folder = lambda r: out / "runs" / r["regime"] / r["optimizer"] / f"seed{r['seed']}"  # noqa: E731
    if not all(folder(r).is_dir() for r in results):
        return  # a report from the committed results.json: the page needs every run's folder
    sections = {regime: [RunRef(folder(r), name=f"{r['optimizer']} seed {r['seed']}", group=r["optimizer"])
                         for r in results if r["regime"] == regime]
                for regime in regimes if any(r["regime"] == regime for r in results)}
    render_comparison(sections, out / run_files.COMPARISON, title=title)


def noise_note(out: Path) -> str:
    """What the evaluation's own noise is, from ``eval_noise.py``'s measurement in ``out``, if made."""
    path = out / "eval_noise.json"
    if not path.is_file():
        return "evaluation noise not measured for this grid yet: see benchmarks/eval_noise.py"
    noise = json.loads(path.read_text())
    return (f"{noise['tokens']} tokens; the evaluation's own noise on a difference between two rows: "
            f"standard error {noise['diff_whole_se']:.4f} nats, against {noise['diff_subset_std']:.4f} for "
            f"the {noise['subset_tokens']}-token evaluation used before; see eval_noise.md")


def provenance_note(results: list[dict[str, Any]]) -> str:
    """The commits the runs ran at (each run's ``result.json`` records its own) and where each command is."""
    return (provenance.describe(results) + " A run with a recorded commit also records its exact trainer "
            "command (`command` in its result.json).")


def load_note(results: list[dict[str, Any]]) -> str:
    """What the load of the machine was while the runs trained (their tokens/s depend on it)."""
    loads = [r["load_average"] for r in results if "load_average" in r]
    if not loads:
        return "load average: not recorded"
    return (f"load average at the end of each run: median {statistics.median(loads):.1f}, "
            f"max {max(loads):.1f} (2 cores)")
