"""Learning rates tuned at each run length on held-out data; SPAM's parts ablated; Muon as a peer.

    python -m benchmarks.length_grid --workers 2          # train what is missing, two runs at a time
    python -m benchmarks.length_grid --report-only        # the report from the finished runs

Every (length, variant) gets its own lr: a sweep of ``grid.LR_GRID`` (SPAM's ablations: ``ABLATION_LRS``, the
same x3 steps one lower, about SPAM's own optimum), seed 0, extended past a winning end, ranked on a tuning
split (documents held out of both training and the reported validation split); then seeds 1 and 2 at the
chosen lr (seed 0 is the sweep's run). The stages, in the order they train:

1. 200 steps: AdamW, SPAM, Stable-SPAM and Muon (``torch.optim.Muon`` on the block matrices, AdamW on the
   rest); then the bad-batch regime (stability grid's) at 200 steps with those lrs;
2. 1000 steps: the same four; 2000 steps (the stability grid's ``long`` regime): AdamW and SPAM;
3. SPAM's ablations at 1000 steps, their sweeps first, then their seeds: no momentum reset, no spike clip, no
   post-reset warmup, the reset interval at 0.5x, 2x and 4x of the grids' (a 20th of the run), the clip
   threshold at 10x;
4. 2000 steps: Stable-SPAM and Muon, then SPAM's ablations;
5. the headlines of the low-bit and memory grids at 1000 steps, tuned the same way: AdamW, SPAM and
   Stable-SPAM with INT4 block linears (``LOWBIT``, against the fp32 rows above); on the spiking model
   (``SPIKEGPT``), AdamW in fp32 and SPAM and Stable-SPAM in INT4; and the memory grid's Pareto pair
   (``MEMORY``), SPAM at density 0.25 with 8-bit state and bitsandbytes' AdamW8bit.
6. SPAM's ablations at 200 steps, where SPAM leads AdamW, and the bad-batch regime without the momentum reset
   and without the spike clip: which part buys the early lead and which the robustness to bad data.

A finished run is never repeated and workers claim runs, so an interrupted grid continues where it stopped
(run the command again). Everything else is the stability grid's setup: byte-level llama-9m, batch 8 x 64
tokens (spikegpt-1m for ``SPIKEGPT``), the 2 MB built-in corpus, the whole validation split at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import grid, memory_grid, provenance
from benchmarks.grid import Regime, Setup
from benchmarks.stability import REGIMES as STABILITY_REGIMES

OUT = Path("benchmarks/results/length")
MODEL, BATCH, SEQ_LEN = "llama-9m", 8, 64
TUNE_FRACTION = 0.05  # as much held out for tuning as for validation
SEEDS = 3
THRESHOLD = 5000.0  # SPAM's default clip threshold
# SPAM's ablations sweep the grid a step lower: SPAM's lr at 1000 steps is 1e-3 with 3e-4 as good, and 1e-2 is
# far off every optimum at that length (the sweeps in README.md), so that run would teach nothing.
ABLATION_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
MAIN = {"adamw": {"optimizer": "adamw"}, "spam": {"optimizer": "spam"},
        "stable-spam": {"optimizer": "stable-spam"}, "muon": {"optimizer": "muon"}}
# The low-bit grids' quantization: weights and activations of the block linears, groups of 32.
INT4 = {"quant": "int4", "quant_group_size": 32, "quant_activations": True}
LOWBIT = {f"int4-{name}": MAIN[name] | INT4 for name in ("adamw", "spam", "stable-spam")}
SPIKEGPT = {"spikegpt-adamw": MAIN["adamw"], "spikegpt-int4-spam": MAIN["spam"] | INT4,
            "spikegpt-int4-stable-spam": MAIN["stable-spam"] | INT4}
# Every row of the memory grid but its AdamW (MAIN's): its two Pareto rows first.
MEMORY = {name: memory_grid.VARIANTS[name] for name in ("spam-d0.25-8bit", "adamw8bit-bnb", "spam-8bit",
                                                        "stable-spam-8bit", "spam-d0.25", "adamw8bit-torchao",
                                                        "galore", "adam-mini")}
HEADLINES = LOWBIT | SPIKEGPT | MEMORY
MODELS = dict.fromkeys(SPIKEGPT, "spikegpt-1m")  # every other variant trains MODEL


def ablations(steps: int) -> dict[str, dict[str, Any]]:
    """SPAM with one part removed or rescaled, against the grids' schedule at ``steps``."""
    base = grid.scaled_schedule({"optimizer": "spam"}, 1 / 20, steps)
    interval = base["reset_interval"]

    def every(factor: float) -> dict[str, Any]:  # the warmup after a reset must fit in the interval
        new = max(4, round(factor * interval))
        return {"reset_interval": new, "warmup_steps": min(base["warmup_steps"], new)}

    kwargs = {"spam-no-reset": {"reset_interval": 0}, "spam-no-clip": {"threshold": 0.0},
              "spam-no-warmup": {"warmup_steps": 0}, "spam-reset-0.5x": every(0.5),
              "spam-reset-2x": every(2), "spam-reset-4x": every(4),
              "spam-threshold-10x": {"threshold": 10 * THRESHOLD}}
    return {name: {"optimizer": "spam", "optimizer_kwargs": k} for name, k in kwargs.items()}


@dataclass(frozen=True)
class Stage:
    steps: int
    variants: tuple[str, ...]
    regime: str = "clean"  # "clean" (swept, then seeds) or a stability regime at the clean stage's lrs
    seeds: bool = True  # False: the sweep only (its seed 0); a later stage trains the other seeds


# In the order they train: what the docs' headlines rest on first, then the ablation one seed at a time.
STAGES = (Stage(200, tuple(MAIN)), Stage(200, tuple(MAIN), "bad-batch"), Stage(1000, tuple(MAIN)),
          Stage(2000, ("adamw", "spam")), Stage(1000, tuple(ablations(1000)), seeds=False),
          Stage(1000, tuple(ablations(1000))), Stage(2000, ("stable-spam", "muon")),
          Stage(2000, tuple(ablations(2000))), Stage(1000, tuple(LOWBIT)), Stage(1000, tuple(SPIKEGPT)),
          Stage(1000, tuple(MEMORY)), Stage(200, tuple(ablations(200))),
          Stage(200, ("spam-no-reset", "spam-no-clip"), "bad-batch"))


def _cells(stages: tuple[Stage, ...]) -> list[Stage]:
    """Each (steps, regime) row once, with its seeds: what the report covers."""
    seen: dict[tuple[int, str, str], Stage] = {}
    for stage in stages:
        for name in stage.variants:
            seen[(stage.steps, stage.regime, name)] = Stage(stage.steps, (name,), stage.regime)
    return list(seen.values())


def setup_at(out: Path, steps: int, name: str) -> Setup:
    return Setup(MODELS.get(name, MODEL), steps, BATCH, SEQ_LEN, out / f"steps{steps}", seeds=SEEDS,
                 tune_fraction=TUNE_FRACTION)


@functools.cache
def _galore(steps: int) -> dict[str, Any]:
    """GaLore at the rank whose state comes closest to SPAM at density 0.25's, as the memory grid sets it."""
    variants = {name: dict(flags) for name, flags in memory_grid.VARIANTS.items()}
    memory_grid.galore_rank(setup_at(Path("."), steps, "galore"), variants)
    return variants["galore"]


def variant(name: str, steps: int) -> dict[str, Any]:
    if name == "galore":
        return _galore(steps)
    return MAIN.get(name) or HEADLINES.get(name) or ablations(steps)[name]


@dataclass(frozen=True)
class Job:
    steps: int
    name: str
    regime: str  # "clean" or a stability regime
    seed: int
    lr: float
    run_dir: Path

    @property
    def key(self) -> str:
        return f"{self.steps}-{self.regime}-{self.name}-{self.seed}-{self.lr:g}"

    @property
    def cell(self) -> str:  # the results' regime name: one per length, so that every cell has one key
        return f"{self.regime}-{self.steps}"


def _finished(job: Job) -> dict[str, Any] | None:
    path = job.run_dir / "result.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return done if done["lr"] == job.lr else None


def _grid_of(name: str) -> tuple[tuple[float, ...], ...]:
    """``sweep_pending``'s lr grid argument for ``name``: none (the default grid) for the main variants."""
    return () if name in MAIN or name in HEADLINES else (ABLATION_LRS,)


def sweep_jobs(out: Path, steps: int, name: str) -> list[Job]:
    """The sweep runs of ``name`` at ``steps`` that exist or are due (their lrs as far as known)."""
    folder = setup_at(out, steps, name).out / "sweep" / name
    jobs: list[Job] = []
    scores: dict[float, float] = {}
    while True:
        pending = grid.sweep_pending(scores, *_grid_of(name))
        if not pending:
            return jobs
        new = [Job(steps, name, "clean", 0, lr, folder / f"lr{lr:g}") for lr in pending]
        jobs += new
        done = {j.lr: _finished(j) for j in new}
        if any(d is None for d in done.values()):
            return jobs  # the sweep cannot go on until these have run
        scores |= {lr: _loss(d, "final_tune_loss") for lr, d in done.items()}


def _loss(result: dict[str, Any] | None, key: str = "final_eval_loss") -> float:
    value = None if result is None else result.get(key)
    return value if value is not None and math.isfinite(value) else math.inf


def chosen_lr(out: Path, steps: int, name: str) -> float | None:
    """The lr the sweep chose (lowest tuning loss), or None while it runs."""
    jobs = sweep_jobs(out, steps, name)
    results = {j.lr: _finished(j) for j in jobs}
    if any(r is None for r in results.values()) or grid.sweep_pending(
            {lr: _loss(r, "final_tune_loss") for lr, r in results.items()}, *_grid_of(name)):
        return None
    return min(results, key=lambda lr: _loss(results[lr], "final_tune_loss"))


def plan(out: Path, stages: tuple[Stage, ...] = STAGES) -> tuple[list[Job], int]:
    """(the jobs that can run now and have not finished, how many more wait on a sweep), in stage order."""
    runnable, waiting = [], 0
    for stage in stages:
        for name in stage.variants:
            # A stability regime's row trains at the clean sweep's lr: that sweep runs here too when due.
            runnable += [j for j in sweep_jobs(out, stage.steps, name)
                         if _finished(j) is None and j not in runnable]
            lr = chosen_lr(out, stage.steps, name)
            seeds = range(1, SEEDS if stage.seeds else 1) if stage.regime == "clean" else range(SEEDS)
            if lr is None:
                waiting += len(seeds)
                continue
            runnable += [j for j in (seed_job(out, stage.steps, name, stage.regime, s, lr) for s in seeds)
                         if _finished(j) is None]
    return runnable, waiting


def seed_job(out: Path, steps: int, name: str, regime: str, seed: int, lr: float) -> Job:
    """The run of ``seed`` at the chosen ``lr``: a clean row's seed 0 is its sweep's run at that lr."""
    folder = setup_at(out, steps, name).out
    if regime == "clean" and seed == 0:
        return Job(steps, name, regime, 0, lr, folder / "sweep" / name / f"lr{lr:g}")
    return Job(steps, name, regime, seed, lr, folder / "runs" / regime / name / f"seed{seed}")


def run(out: Path, job: Job) -> dict[str, Any]:
    regime = Regime() if job.regime == "clean" else STABILITY_REGIMES[job.regime]
    return grid.run_one(setup_at(out, job.steps, job.name), job.name, variant(job.name, job.steps), job.cell,
                        regime, job.seed, job.lr, job.run_dir)


# -- workers: each claims a run by creating its claim folder, so that two never train the same run -------


def _claim(out: Path, job: Job) -> Path | None:
    """The job's claim file, holding this process's pid, or None when a live worker holds it.

    The pid is written before the claim appears (a hard link of a finished file fails when the claim
    exists), so no worker ever sees a claim without its pid.
    """
    claim = out / "claims" / job.key
    claim.parent.mkdir(parents=True, exist_ok=True)
    mine = claim.parent / f".{job.key}.{os.getpid()}"
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(mine, claim)
                return claim
            except FileExistsError:
                pid = claim.read_text() if claim.is_file() else ""
                if pid.isdigit() and Path(f"/proc/{pid}").exists():
                    return None
                claim.unlink(missing_ok=True)  # left by a worker that was stopped: take it over
        return None
    finally:
        mine.unlink()


def work(out: Path, stages: tuple[Stage, ...]) -> None:
    """Train runnable jobs until none is left (waiting for other workers' sweeps where needed)."""
    while True:
        runnable, waiting = plan(out, stages)
        claimed = None
        for job in runnable:
            claimed = _claim(out, job)
            if claimed is not None:
                break
        if claimed is None:
            if not runnable and not waiting:
                return
            time.sleep(10)  # the other workers hold every runnable job, or a sweep this needs
            continue
        try:
            if _finished(job) is None:  # another worker may have finished it since this plan was made
                result = run(out, job)
                losses = " ".join(f"{k} {result[f'final_{k}_loss']}" for k in ("eval", "tune"))
                print(f"{job.cell:14s} {job.name:18s} seed {job.seed} lr {job.lr:g}: {losses}", flush=True)
        finally:
            claimed.unlink(missing_ok=True)


# -- report --------------------------------------------------------------------------------------------


def collect(out: Path, stages: tuple[Stage, ...] = STAGES) -> tuple[list[dict], list[dict], list[str]]:
    """(seed runs at the chosen lrs, every sweep run, the cells not yet trained), from the run folders."""
    runs, sweeps, missing = [], [], []
    for stage in _cells(stages):
        for name in stage.variants:
            if stage.regime == "clean":
                for job in sweep_jobs(out, stage.steps, name):
                    done = _finished(job)
                    if done is not None:
                        sweeps.append(done)
            lr = chosen_lr(out, stage.steps, name)
            for seed in range(SEEDS):
                job = None if lr is None else seed_job(out, stage.steps, name, stage.regime, seed, lr)
                done = None if job is None else _finished(job)
                if done is None:
                    missing.append(f"{stage.regime} / {stage.steps} steps / {name} / seed {seed}"
                                   + ("" if lr is not None else " (its lr sweep has not finished)"))
                else:
                    runs.append(done)
    return runs, sweeps, missing


def _runs(results: list[dict], cell: str, name: str) -> list[dict]:
    return [r for r in results if r["regime"] == cell and r["optimizer"] == name]


def _sweep_table(sweeps: list[dict], steps: int, names: list[str]) -> list[str]:
    rows = {}
    for r in sweeps:
        if r["steps"] == steps and r["optimizer"] in names:
            rows.setdefault(r["optimizer"], {})[r["lr"]] = r["final_tune_loss"]
    if not rows:
        return []
    lrs = sorted({lr for scores in rows.values() for lr in scores})
    lines = [f"Tuning-split loss of the lr sweep (seed 0), {steps} steps; the chosen lr in bold:", "",
             "| variant | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
    for name, scores in rows.items():
        best = min(scores, key=lambda lr: _loss({"final_tune_loss": scores[lr]}, "final_tune_loss"))
        settled = not grid.sweep_pending(scores, *_grid_of(name))
        cells = ["" if lr not in scores else f"**{scores[lr]:.4f}**" if lr == best and settled
                 else f"{scores[lr]:.4f}" for lr in lrs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _length_table(results: list[dict], steps: int, names: list[str],
                  refs: tuple[str, ...] = ("adamw", "spam")) -> list[str]:
    cell = f"clean-{steps}"
    names = [n for n in names if _runs(results, cell, n)]
    if not names:
        return []
    lines = [f"| variant | lr | val loss ({steps} steps) | "
             + "".join(f"− {ref}'s, paired | " for ref in refs) + "wall s |", "|---" * (len(refs) + 4) + "|"]
    for name in names:
        runs = _runs(results, cell, name)
        diffs = ["" if name == ref else grid.paired_difference(runs, _runs(results, cell, ref))
                 for ref in refs]
        losses = grid.mean_spread([r["final_eval_loss"] for r in runs])
        lines.append(f"| {name} | {runs[0]['lr']:g} | {losses} | " + "".join(f"{d} | " for d in diffs)
                     + f"{statistics.fmean(r['wall_s'] for r in runs):.0f} |")
    return lines + [""]


# The headline reruns: (title, variants, the rows each is paired against, what the section is).
HEADLINE_SECTIONS = (
    ("INT4 training (LLaMA), 1000 steps", LOWBIT, ("adamw", "int4-adamw"),
     "The low-bit grid's natural regime (`benchmarks/results/lowbit/`), each variant at its own lr: the "
     "block linears' weights and activations fake-quantized to INT4 in groups of 32; paired against fp32 "
     "AdamW (the 1000-step table above) and INT4 AdamW."),
    ("INT4 training (SpikeGPT), 1000 steps", SPIKEGPT, ("spikegpt-adamw",),
     "The SpikeGPT low-bit grid's natural regime (`benchmarks/results/lowbit_spikegpt/`) on spikegpt-1m, "
     "each variant at its own lr: AdamW in fp32, SPAM and Stable-SPAM with INT4 block linears."),
    ("Memory-matched, 1000 steps", MEMORY, ("adamw", "adamw8bit-bnb"),
     "The memory grid's rows (`benchmarks/results/memory/`, one seed at the 200-step grid's lrs there), "
     "each at its own lr here: its two Pareto rows first, SPAM at density 0.25 with 8-bit state (0.10x "
     "AdamW's state there) and bitsandbytes' AdamW8bit (0.26x); GaLore at the rank whose state comes "
     "closest to SPAM at density 0.25's; paired against fp32 AdamW (the 1000-step table above) and "
     "AdamW8bit."),
)


def _bad_batch_table(results: list[dict], names: list[str]) -> list[str]:
    lines = ["| variant | lr | clean val loss | bad-batch val loss | bad-batch − clean, paired |",
             "|---|---|---|---|---|"]
    for name in names:
        bad, clean = _runs(results, "bad-batch-200", name), _runs(results, "clean-200", name)
        if bad:
            losses = [grid.mean_spread([r["final_eval_loss"] for r in runs]) for runs in (clean, bad)]
            lines.append(f"| {name} | {bad[0]['lr']:g} | {losses[0]} | {losses[1]} | "
                         f"{grid.paired_difference(bad, clean)} |")
    return lines + [""] if len(lines) > 2 else []


def plot(out: Path, results: list[dict]) -> None:
    """Validation loss (mean and seed range) at each length: the main variants, and SPAM's ablations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, names, title in ((axes[0], list(MAIN), "each variant at its own lr"),
                             (axes[1], ["spam", *ablations(1000)], "SPAM's ablations (each at its own lr)")):
        for name in names:
            points = [(s, [r["final_eval_loss"] for r in _runs(results, f"clean-{s}", name)])
                      for s in (200, 1000, 2000)]
            points = [(s, v) for s, v in points if v]
            if not points:
                continue
            means = [statistics.fmean(v) for _, v in points]
            err = [[m - min(v) for m, (_, v) in zip(means, points)],
                   [max(v) - m for m, (_, v) in zip(means, points)]]
            ax.errorbar([s for s, _ in points], means, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("training steps")
        ax.set_ylabel("final validation loss (mean, seed range)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "length_curves.png", dpi=110)
    plt.close(fig)


def report(out: Path, command: str, stages: tuple[Stage, ...] = STAGES) -> list[dict]:
    runs, sweeps, missing = collect(out, stages)
    total = len(runs) + len(missing)
    lines = [f"# Learning rates tuned per run length ({MODEL}, batch {BATCH} x {SEQ_LEN} tokens)", "",
             f"Command: `{command}`", "", grid.provenance_note(runs + sweeps), "",
             f"Each variant's lr is chosen at each length from a sweep (seed 0) ranked on a tuning split: "
             f"{TUNE_FRACTION:.0%} of the documents, held out of training and disjoint from the validation "
             "split the tables report. Seeds 1 and 2 then train at the chosen lr. SPAM's reset interval is a "
             "20th of the run (warmup 0.3 of it, clip delay 0.04), Stable-SPAM's twice that; Muon is "
             "torch.optim.Muon on the block matrices (lr matched to AdamW's update size) and AdamW on the "
             f"embeddings, head and norms. {grid.SPREAD_NOTE} Paired: the difference to the named variant's "
             "run of the same seed, mean ± sample std over the seeds both have. "
             f"{grid.load_note(runs + sweeps)}.", "",
             f"**{len(runs)} of {total} cells have finished.**" if missing else f"All {total} cells finished."
             ,
             ""]
    for steps in (200, 1000, 2000):
        names = list(dict.fromkeys(n for stage in stages if stage.steps == steps and stage.regime == "clean"
                                   for n in stage.variants if n not in HEADLINES))
        table, sweep_table = _length_table(runs, steps, names), _sweep_table(sweeps, steps, names)
        if table or sweep_table:
            lines += [f"## {steps} steps", ""] + table + sweep_table
    for title, group, refs, about in HEADLINE_SECTIONS:
        names = list(group)
        table, sweep_table = _length_table(runs, 1000, names, refs), _sweep_table(sweeps, 1000, names)
        if table or sweep_table:
            lines += [f"## {title}", "", about, ""] + table + sweep_table
    bad = _bad_batch_table(runs, list(dict.fromkeys(
        n for stage in stages if stage.regime == "bad-batch" for n in stage.variants)))
    if bad:
        lines += ["## Bad batches (200 steps)", "",
                  "The stability grid's bad-batch regime (steps 60, 100 and 140 train on uniformly random "
                  "bytes) at each variant's 200-step lr.", ""] + bad
    if missing:
        lines += ["## Not yet trained", "", "Rerun the command to train them; finished runs are skipped.", ""]
        lines += [f"- {m}" for m in missing] + [""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"runs": runs, "sweep": sweeps, "missing": missing}))
    if runs:
        plot(out, runs)
    return runs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.length_grid",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--workers", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stage numbers, 1..{len(STAGES)} (default: all, in order)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; write the report")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        picked = [int(s) for s in args.stages.split(",")] if args.stages else list(range(1, len(STAGES) + 1))
        if not all(1 <= i <= len(STAGES) for i in picked):  # 0 and -1 would index STAGES from its end
            raise ValueError(picked)
        stages = tuple(STAGES[i - 1] for i in picked)
    except (ValueError, IndexError):
        parser.error(f"--stages takes numbers from 1 to {len(STAGES)}, e.g. 1,2,3")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.worker:
        work(args.out, stages)
        return []
    if not args.report_only:
        given = list(argv if argv is not None else sys.argv[1:])
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        worker = [sys.executable, "-m", "benchmarks.length_grid", *given, "--worker"]
        procs = [subprocess.Popen(worker, env=env) for _ in range(args.workers)]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("error: a worker failed (its error is above); rerun to go on where it stopped")
    command = provenance.module_command("length_grid", argv, drop=("--report-only",))
    return report(args.out, command, stages)


if __name__ == "__main__":
    main()
