"""Every number the docs quote from a grid or a benchmark, recomputed from the committed results.

Each claim is a piece of prose with ``{}`` fields and the values, computed from ``benchmarks/results/``, that
fill them; the filled text must be in the doc (whitespace aside). A rerun grid whose numbers moved, or prose
edited away from its table, fails here. docs/choosing.md is held whole: every decimal number in it must
belong to a claim or be a setting named in SETTINGS.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@functools.cache
def runs(grid: str, name: str = "results.json") -> tuple[dict, ...]:
    saved = json.loads((RESULTS / grid / name).read_text())
    return tuple(saved["runs"] if isinstance(saved, dict) else saved)


def losses(grid: str, regime: str, variant: str, round1: bool = False) -> dict[int, float]:
    name = "results_round1.json" if round1 else "results.json"
    return {r["seed"]: r["final_eval_loss"] for r in runs(grid, name)
            if r["regime"] == regime and r["optimizer"] == variant}


def mean(grid: str, regime: str, variant: str, round1: bool = False) -> float:
    values = losses(grid, regime, variant, round1)
    assert values, f"no committed run {grid} / {regime} / {variant}"
    return statistics.fmean(values.values())


def gap(grid: str, regime: str, variant: str, minus: tuple[str, str], round1: bool = False) -> float:
    """Mean loss of ``variant`` in ``regime`` minus that of the (regime, variant) ``minus``."""
    return mean(grid, regime, variant, round1) - mean(grid, *minus, round1)


def paired(grid: str, regime: str, variant: str, reference: str) -> tuple[float, float]:
    """Mean and sample std over seeds of the variant's loss minus the reference's of the same seed."""
    a, b = losses(grid, regime, variant), losses(grid, regime, reference)
    diffs = [a[k] - b[k] for k in a if k in b]
    return statistics.fmean(diffs), statistics.stdev(diffs)


def seed_gap(grid: str, regime: str, variant: str, reference: str, seed: int) -> float:
    return losses(grid, regime, variant)[seed] - losses(grid, regime, reference)[seed]


def memory_row(variant: str) -> dict:
    saved = json.loads((RESULTS / "memory" / "results.json").read_text())
    return next(r for r in saved["rows"] if r["variant"] == variant)


def triads(path: str) -> list[float]:
    """The triad copy bandwidths (GB/s) an optimizer-step table measured, one per section, in order."""
    return [float(m) for m in re.findall(r"Triad bandwidth: ([0-9.]+) GB/s", (RESULTS / path).read_text())]


def table_cells(path: str, row: str, column: str) -> list[float]:
    """Every value of ``column`` in the rows named ``row`` of every markdown table in the result file."""
    values, header = [], None
    for line in (RESULTS / path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            header = None
        elif header is None:
            header = cells
        elif cells[0] == row and column in header:
            values.append(float(cells[header.index(column)].rstrip("x%").replace(",", "")))
    return values


def flags(grid: str, kind: str, long: bool = True) -> int:
    """False flags of ``kind`` over the grid's runs (the ``long`` ones too, or not): flags on steps with no
    injection, whatever their cause (``grid.false_flags``)."""
    return sum(not any(a <= s <= b + 2 for a, b in r["injections"])
               for r in runs(grid) if long or r["regime"] != "long" for s in r[f"{kind}_events"])


def recall(grid: str, kind: str, clipped: bool) -> tuple[int, int]:
    """(flagged, injected) over the grid's injected runs, for the rows that clip or do not."""
    hits = [any(a <= s <= b + 2 for s in r[f"{kind}_events"]) for r in runs(grid) if r["injections"]
            and kind == "grad" and ("clip" in r["optimizer"]) == clipped
            for a, b in r["injections"] if r["regime"] != "bad-batch"]
    return sum(hits), len(hits)


def near_threshold(kind: str, factor: float | None = None, step: int | None = None) -> tuple[int, int]:
    """(flagged, injected) in the detector-recall grid, at one spike factor (all when None), at one injected
    step (all when None)."""
    hits = [any(a <= s <= b + 2 for s in r[f"{kind}_events"]) for r in runs(DR)
            if factor is None or r["regime"].endswith(f"-x{factor:g}")
            for a, b in r["injections"] if step is None or a == step]
    return sum(hits), len(hits)


def _near_threshold_claim() -> list:
    saved = json.loads((RESULTS / DR / "results.json").read_text())
    return [saved["thresholds"]["gss_threshold"],
            *(n for f in (1000, 100, 30, 10) for n in near_threshold("grad", f)), *near_threshold("loss"),
            flags(DR, "grad"), flags(DR, "loss"), sum(r["steps"] for r in runs(DR))]


def worst_jump(grid: str, regime: str, variant: str, round1: bool = True) -> float:
    name = "results_round1.json" if round1 else "results.json"
    return max(j for r in runs(grid, name) if r["regime"] == regime and r["optimizer"] == variant
               for j in r["jump"] if j is not None)


def eval_se(grid: str) -> float:
    return json.loads((RESULTS / grid / "eval_noise.json").read_text())["diff_whole_se"]


S, SG, LB, LBS = "stability", "stability_spikegpt", "lowbit", "lowbit_spikegpt"
DR = "detector_recall"
CLEAN = ("clean", "adamw")
F32 = ("natural", "fp32 adamw")
CHOOSING = "docs/choosing.md"


def _burst_recovery() -> list[int]:
    per_seed = [max(r["recovery"]) for r in runs(S, "results_round1.json")
                if r["regime"] == "spike-burst" and r["optimizer"] == "spam"]
    return [min(per_seed), max(per_seed)]


def _harsh_best_margin() -> float:
    means = {v: mean(LB, "harsh", v) for v in {r["optimizer"] for r in runs(LB) if r["regime"] == "harsh"}}
    best = min(means, key=means.get)
    assert best == "int4 stable-spam"
    return sorted(means.values())[1] - means[best]


def _every_seed(grid: str, regime: str, better: str, worse: str) -> bool:
    a, b = losses(grid, regime, better), losses(grid, regime, worse)
    return all(a[k] < b[k] for k in b)


def _bad_batch_losses() -> list[float]:
    at, before = [], []
    for r in runs(S):
        if r["regime"] == "bad-batch":
            curve = dict(r["curve"])
            at += [curve[a] for a, _ in r["injections"]]
            before += [curve[a - 1] for a, _ in r["injections"]]
    return [statistics.fmean(at), statistics.fmean(before)]


def _spread(grid: str, regime: str, variants: list[str], round1: bool = False) -> float:
    values = [mean(grid, regime, v, round1) for v in variants]
    return max(values) - min(values)


FULL_DENSITY = ["adamw", "adamw+clip1", "spam", "spam+clip1", "stable-spam", "adamw+guard"]
ALL8 = ["adamw", "adamw+clip1", "adamw+zclip", "spam", "spam+clip1", "spam-d0.25", "stable-spam",
        "adamw+guard"]
PEERS = ["bitsandbytes AdamW8bit", "torchao AdamW8bit", "torchao AdamW4bit", "GaLore AdamW rank 64",
         "Adam-mini"]
BANDWIDTH = "optimizer_step_cpu_bandwidth.md"  # ns/param, GB/s and the triad, 1 and 2 threads
SPAM8 = ["SPAM 8-bit state (default flags)", "SPAM density 0.25, 8-bit state (default flags)"]

# (doc, prose with {} fields, the values that fill them)
CLAIMS: list[tuple[str, str, object]] = [
    # In one table
    (CHOOSING, "200 steps: SPAM {:.3f} vs AdamW {:.3f} and AdamW + clip {:.3f} (SPAM − AdamW, paired over 3 "
               "seeds: {:+.3f} ± {:.3f})",
     lambda: [mean(S, "clean", "spam"), mean(S, *CLEAN), mean(S, "clean", "adamw+clip1"),
              *paired(S, "clean", "spam", "adamw")]),
    (CHOOSING, "(8-bit SPAM {:.3f}, memory grid seed 0; INT4 SPAM {:.3f} behind INT4 AdamW, low-bit "
               "grid, 3 seeds) "
               "and {:.2f} behind on SpikeGPT (INT4, low-bit grid), at 2000 steps {:.3f} behind "
               "(`long`, 2 seeds), "
               "Stable-SPAM {:.3f} behind",
     lambda: [memory_row("spam-8bit")["val_loss"] - memory_row("adamw")["val_loss"],
              gap(LB, "natural", "int4 spam", ("natural", "int4 adamw")),
              gap(LBS, "natural", "int4 spam", F32),
              gap(S, "long", "spam", ("long", "adamw")), gap(S, "long", "stable-spam", ("long", "adamw"))]),
    (CHOOSING, "AdamW {:.3f} -> AdamW + clip {:.3f} (no loss against clean); SPAM alone loses {:.2f}; "
               "ZClip {:.3f} "
               "vs its clean {:.3f}",
     lambda: [mean(S, "spike-all", "adamw"), mean(S, "spike-all", "adamw+clip1"),
              gap(S, "spike-all", "spam", ("clean", "spam")), mean(S, "spike-all", "adamw+zclip"),
              mean(S, "clean", "adamw+zclip")]),
    (CHOOSING, "round 1: SPAM's loss jumps {:.2f} nats and takes {}-{} steps back",
     lambda: [worst_jump(S, "spike-burst", "spam"), *_burst_recovery()]),
    (CHOOSING, "AdamW {:+.3f}, SPAM {:+.3f}, AdamW + clip {:+.3f} (it scales",
     lambda: [gap(S, "entry-spikes", v, ("clean", v)) for v in ("adamw", "spam", "adamw+clip1")]),
    (CHOOSING, "every optimizer within {:.3f} of its clean loss",
     lambda: [max(abs(gap(S, "spike-tensors", v, ("clean", v))) for v in ALL8)]),
    (CHOOSING, "AdamW {:+.3f}, AdamW + guard {:+.3f}, AdamW + clip {:+.3f}, ZClip {:+.3f}, SPAM {:+.3f}, "
               "SPAM + clip {:+.3f} |",
     lambda: [gap(S, "bad-batch", v, ("clean", v)) for v in
              ("adamw", "adamw+guard", "adamw+clip1", "adamw+zclip", "spam", "spam+clip1")]),
    (CHOOSING, "round 1 at 10x: AdamW {:.3f}, AdamW + clip {:.3f}, SPAM {:.3f} (SPAM at density 0.25 already",
     lambda: [mean(S, "high-lr", v, True) for v in ("adamw", "adamw+clip1", "spam")]
     + [None if losses(S, "high-lr", "spam-d0.25", True) == losses(S, "clean", "spam-d0.25", True) else "x"]),
    (CHOOSING, "LLaMA: INT4 AdamW {:.3f} vs fp32 {:.3f}; Stable-SPAM {:.3f}, SPAM {:.3f}; at 10x lr, no "
               "warmup, "
               "Stable-SPAM {:.3f} vs AdamW {:.3f}. SpikeGPT: INT4 Stable-SPAM {:.3f} beats fp32 AdamW "
               "{:.3f} on "
               "every seed{}; SPAM {:.3f}",
     lambda: [mean(LB, "natural", "int4 adamw"), mean(LB, *F32), mean(LB, "natural", "int4 stable-spam"),
              mean(LB, "natural", "int4 spam"), mean(LB, "harsh", "int4 stable-spam"),
              mean(LB, "harsh", "int4 adamw"),
              mean(LBS, "natural", "int4 stable-spam"), mean(LBS, *F32),
              "" if _every_seed(LBS, "natural", "int4 stable-spam", "fp32 adamw") else " (NOT)",
              mean(LBS, "natural", "int4 spam")]),
    (CHOOSING, "state {:.3f}x AdamW's ({:.3f}x at 20M-60M shapes) vs {:.2f}x for 8-bit AdamW; loss "
               "{:.3f} vs {:.3f} "
               "(seed 0)",
     lambda: [memory_row("spam-d0.25-8bit")["bytes_per_param"] / 8, *set(table_cells(
         "optimizer_step_cpu_memory.md", SPAM8[1], "x AdamW state")),
              memory_row("adamw8bit-bnb")["bytes_per_param"] / 8, memory_row("spam-d0.25-8bit")["val_loss"],
              memory_row("adamw8bit-bnb")["val_loss"]]),
    (CHOOSING, "| {} of {} injected gradient spikes flagged (unclipped runs) and, through the loss, {} "
               "of {} bad "
               "batches; {} gradient and {} loss false flags in {:,} steps, all in the 2000-step runs |",
     lambda: [*recall(S, "grad", clipped=False), *_bad_batch_recall(), flags(S, "grad"), flags(S, "loss"),
              sum(r["steps"] for r in runs(S))]),
    # The monitor near its threshold (here and in the stability FINDINGS)
    *[(doc, "the gradient rule (threshold {:g}) flagged {} of {} spikes at 1000x, {} of {} at 100x, {} of {} "
            "at 30x and {} of {} at 10x, and the loss rule {} of {}; {} gradient and {} loss false flags in "
            "{:,} steps.", _near_threshold_claim)
      for doc in (CHOOSING, "benchmarks/results/stability/FINDINGS.md")],
    ("benchmarks/results/stability/FINDINGS.md", "(at 100x: {} of {} flagged at step 60, {} of {} at step "
                                                 "100, {} of {} at step 140)",
     lambda: [n for step in (60, 100, 140) for n in near_threshold("grad", 100, step)]),
    # Whole-gradient spikes
    (CHOOSING, "AdamW + clip 1.0 ends where its clean run ends (LLaMA {:.3f} against {:.3f}; SpikeGPT, "
               "round 1, "
               "{:.3f} against {:.3f}). ZClip does too ({:.3f} against {:.3f}).",
     lambda: [mean(S, "spike-all", "adamw+clip1"), mean(S, "clean", "adamw+clip1"),
              mean(SG, "spike-all", "adamw+clip1", True), mean(SG, "clean", "adamw+clip1", True),
              mean(S, "spike-all", "adamw+zclip"), mean(S, "clean", "adamw+zclip")]),
    (CHOOSING, "Plain AdamW is wrecked (LLaMA {:+.2f} nats; SpikeGPT {:+.2f})",
     lambda: [gap(S, "spike-all", "adamw", CLEAN), gap(SG, "spike-all", "adamw", CLEAN, True)]),
    (CHOOSING, "SPAM alone loses {:.2f} nats; in bursts its loss jumps by up to {:.2f} nats and takes "
               "{}-{} steps",
     lambda: [gap(S, "spike-all", "spam", ("clean", "spam")), worst_jump(S, "spike-burst", "spam"),
              *_burst_recovery()]),
    (CHOOSING, "SPAM + clip is the best full-density LLaMA run in every spike regime{}; SPAM at density "
               "0.25 (at its "
               "own lr, 10x the others') ends lower still in `spike-tensors`, `entry-spikes` and "
               "`bad-batch`{}.",
     lambda: ["" if all(min(FULL_DENSITY + ["adamw+zclip"], key=lambda v: mean(S, g, v)) == "spam+clip1"
                        for g in ("spike-tensors", "spike-all", "entry-spikes", "bad-batch")) else " (NOT)",
              "" if [g for g in ("spike-tensors", "spike-all", "entry-spikes", "bad-batch")
                     if mean(S, g, "spam-d0.25") < mean(S, g, "spam+clip1")]
              == ["spike-tensors", "entry-spikes", "bad-batch"] else " (NOT)"]),
    (CHOOSING, "turns AdamW's {:+.2f} into {:+.3f} by skipping the updates",
     lambda: [gap(S, "spike-all", "adamw", CLEAN),
              gap(S, "spike-all", "adamw+guard", ("clean", "adamw+guard"))]),
    # Entries and tensors
    (CHOOSING, "Nobody is hurt by more than {:.3f} nats.",
     lambda: [max(gap(S, g, v, ("clean", v)) for g in ("spike-tensors", "entry-spikes") for v in ALL8)]),
    (CHOOSING, "per-entry spikes ({:+.3f}): the clip scales", lambda: [gap(S, "entry-spikes", "adamw+clip1",
                                                                            ("clean", "adamw+clip1"))]),
    (CHOOSING, "nothing to rescue ({:+.3f})", lambda: [gap(S, "entry-spikes", "spam", ("clean", "spam"))]),
    # Bad data
    (CHOOSING, "(its loss {:.1f} nats on average, against {:.1f} the step before). AdamW {:+.3f}, AdamW "
               "+ clip "
               "{:+.3f}, AdamW + ZClip {:+.3f}, Stable-SPAM {:+.3f}, SPAM {:+.3f}, SPAM + clip {:+.3f}. "
               "The guard at "
               "its default window (128) did not skip these steps ({:+.3f})",
     lambda: [*_bad_batch_losses(), *[gap(S, "bad-batch", v, ("clean", v)) for v in
              ("adamw", "adamw+clip1", "adamw+zclip", "stable-spam", "spam", "spam+clip1", "adamw+guard")]]),
    # High learning rate
    (CHOOSING, "LLaMA: SPAM {:.3f} holds up best; AdamW {:.3f}, AdamW + clip {:.3f}.",
     lambda: [mean(S, "high-lr", v, True) for v in ("spam", "adamw", "adamw+clip1")]),
    (CHOOSING, "SpikeGPT (0.1): all within {:.2f} nats ({:.3f}-{:.3f}), SPAM slightly behind",
     lambda: [math.ceil(100 * _spread(SG, "high-lr", ALL8[:2] + ALL8[3:], True)) / 100,
              *sorted(mean(SG, "high-lr", v, True) for v in ALL8 if v != "adamw+zclip")[::6]]),
    # Longer runs: the table, row by row (here and in the stability FINDINGS)
    *[(doc, "| " + label + " | {:.3f} | {:.3f} |" + ("" if v == "adamw" else
                                                           " {:+.3f} | {:+.3f} ({:+.3f} / {:+.3f}) |"),
       (lambda v=v: [mean(S, "clean", v), mean(S, "long", v)] + ([] if v == "adamw" else [
           gap(S, "clean", v, CLEAN), gap(S, "long", v, ("long", "adamw")),
           seed_gap(S, "long", v, "adamw", 0), seed_gap(S, "long", v, "adamw", 1)])))
      for label, v in (("AdamW", "adamw"), ("AdamW + norm clip 1.0", "adamw+clip1"),
                       ("AdamW + ZClip", "adamw+zclip"), ("SPAM", "spam"), ("Stable-SPAM", "stable-spam"))
      for doc in (CHOOSING, "benchmarks/results/stability/FINDINGS.md")],
    *[(doc, "SPAM's {:.2f}-nat lead over AdamW at 200 steps becomes a {:.3f}-nat deficit at 2000, on "
               "both seeds "
               "({:.1f} standard errors of the evaluation noise on the mean of two); Stable-SPAM ends "
               "{:.2f} behind "
               "AdamW (level on seed 0)",
     lambda: [-gap(S, "clean", "spam", CLEAN), gap(S, "long", "spam", ("long", "adamw")),
              gap(S, "long", "spam", ("long", "adamw")) / (eval_se(S) / math.sqrt(2)),
              gap(S, "long", "stable-spam", ("long", "adamw"))])
      for doc in (CHOOSING, "benchmarks/results/stability/FINDINGS.md")],
    *[(doc, "SPAM {:.3f}-{:.3f} behind AdamW in the memory grid, INT4 SPAM {:.3f} behind INT4 AdamW in the "
            "low-bit one",
       lambda: [*_memory_spam_gaps(), gap(LB, "natural", "int4 spam", ("natural", "int4 adamw"))])
      for doc in (CHOOSING, "benchmarks/results/stability/FINDINGS.md")],
    ("benchmarks/results/stability/FINDINGS.md", "A batch of random bytes has a loss of {:.1f} nats on "
     "average, against {:.1f} the step before. AdamW loses {:.2f} nats;",
     lambda: [*_bad_batch_losses(), gap(S, "bad-batch", "adamw", CLEAN)]),
    # Low-bit
    (CHOOSING, "(2.018 against 2.010 in full precision) and FP4 (E2M1) {:.2f}; INT4 SPAM ended {:.3f} ± "
               "{:.3f} nats behind full-precision AdamW, INT4 Stable-SPAM {:.3f} ± {:.3f} (paired over "
               "seeds)",
     lambda: [gap(LB, "natural", "fp4 adamw", F32), *paired(LB, "natural", "int4 spam", "fp32 adamw"),
              *paired(LB, "natural", "int4 stable-spam", "fp32 adamw")]),
    (CHOOSING, "INT4 cost AdamW nothing measurable ({:.3f} against {:.3f} in full precision)",
     lambda: [mean(LB, "natural", "int4 adamw"), mean(LB, *F32)]),
    (CHOOSING, "Stable-SPAM was best on every seed{}, by {:.2f} nats ({:.3f})",
     lambda: ["" if all(_every_seed(LB, "harsh", "int4 stable-spam", v) for v in
                        ("int4 adamw", "int4 adamw+clip1", "int4 spam", "int4 spam+clip1",
                         "int4 adamw+guard"))
              else " (NOT)", _harsh_best_margin(), mean(LB, "harsh", "int4 stable-spam")]),
    (CHOOSING, "INT4 Stable-SPAM ({:.3f}) and FP4 Stable-SPAM ({:.3f}) beat full-precision AdamW "
               "({:.3f}) on every seed{} (INT4: {:+.3f} ± {:.3f} paired), while SPAM ends {:.2f} behind",
     lambda: [mean(LBS, "natural", "int4 stable-spam"), mean(LBS, "natural", "fp4 stable-spam"),
              mean(LBS, *F32),
              "" if _every_seed(LBS, "natural", "fp4 stable-spam", "fp32 adamw") else " (NOT)",
              *paired(LBS, "natural", "int4 stable-spam", "fp32 adamw"),
              gap(LBS, "natural", "int4 spam", F32)]),
    (CHOOSING, "made loss jumps of up to {:.0f} nats", lambda: [_lowbit_harsh_jump()]),
    # Memory
    (CHOOSING, "({:.3f}x AdamW's on the grid model, {:.3f}x at 20M-60M shapes; 8-bit AdamW {:.2f}x, "
               "torchao's 4-bit "
               "AdamW {:.2f}x, GaLore at a matched rank {:.2f}x, Adam-mini {:.2f}x)",
     lambda: [memory_row("spam-d0.25-8bit")["bytes_per_param"] / 8,
              *set(table_cells("optimizer_step_cpu_memory.md", SPAM8[1], "x AdamW state")),
              memory_row("adamw8bit-bnb")["bytes_per_param"] / 8,
              *set(table_cells("optimizer_step_cpu_memory.md", "torchao AdamW4bit", "x AdamW state")),
              memory_row("galore")["bytes_per_param"] / 8, memory_row("adam-mini")["bytes_per_param"] / 8]),
    (CHOOSING, "float32 state ({:.3f} against {:.3f})",
     lambda: [memory_row("spam-d0.25-8bit")["val_loss"], memory_row("spam-d0.25")["val_loss"]]),
    (CHOOSING, "every SPAM variant is {:.3f}-{:.3f} nats behind AdamW", lambda: _memory_spam_gaps()),
    (CHOOSING, "On CPU its step costs {:.2f}-{:.2f}x fused AdamW's; every peer's {:.1f}-{:.0f}x.",
     lambda: [*_minmax(v for row in SPAM8 for v in _step_ratios(row)[-2:]),  # the 31-round run
              *_minmax(v for row in PEERS for v in _step_ratios(row))]),
    (CHOOSING, "Stable-SPAM with 8-bit state (one run) ends level with AdamW ({:.3f}) at {:.2f}x its state",
     lambda: [memory_row("stable-spam-8bit")["val_loss"],
              memory_row("stable-spam-8bit")["bytes_per_param"] / 8]),
    (CHOOSING, "({:.0f}x fused AdamW's on the grid model)",
     lambda: [memory_row("stable-spam-8bit")["step_ratio"]]),
    (CHOOSING, "bitsandbytes' AdamW8bit ({:.3f}, {:.3f}x)",
     lambda: [memory_row("adamw8bit-bnb")["val_loss"], memory_row("adamw8bit-bnb")["bytes_per_param"] / 8]),
    # SpikeGPT
    (CHOOSING, "clean runs of the full-density optimizers within {:.2f} nats (round 1: Stable-SPAM "
               "{:.3f}, AdamW + "
               "clip {:.3f}, SPAM {:.3f}, AdamW {:.3f})",
     lambda: [_spread(SG, "clean", FULL_DENSITY, True), *[mean(SG, "clean", v, True) for v in
                                                           ("stable-spam", "adamw+clip1", "spam", "adamw")]]),
    (CHOOSING, "SPAM alone loses {:.2f}). This round's",
     lambda: [gap(SG, "spike-all", "spam", ("clean", "spam"), True)]),
    (CHOOSING, "per-entry spikes move nobody by more than {:.3f} nats; bad batches cost AdamW and SPAM alike "
               "({:+.2f}) and the clips {:+.2f}, while SPAM + clip ({:+.3f}), Stable-SPAM ({:+.3f}) and "
               "the spike "
               "guard ({:+.3f}, it skipped them)",
     lambda: [max(abs(gap(SG, "entry-spikes", v, ("clean", v))) for v in ALL8),
              statistics.fmean(gap(SG, "bad-batch", v, ("clean", v)) for v in ("adamw", "spam")),
              statistics.fmean(gap(SG, "bad-batch", v, ("clean", v)) for v in ("adamw+clip1", "adamw+zclip")),
              *[gap(SG, "bad-batch", v, ("clean", v))
                for v in ("spam+clip1", "stable-spam", "adamw+guard")]]),
    # Monitoring
    (CHOOSING, "flagged {} of the {} injected gradient spikes on unclipped runs (one entry-spike "
               "missed); its loss "
               "rule (20-loss window) flags all {} bad batches. Over all {} runs of the LLaMA grid "
               "({:,} steps) it "
               "raised {} gradient and {} loss false flags, all in the 2000-step `long` runs{}",
     lambda: [*recall(S, "grad", clipped=False), _bad_batch_recall()[1], len(runs(S)),
              sum(r["steps"] for r in runs(S)), flags(S, "grad"), flags(S, "loss"),
              "" if flags(S, "grad", long=False) + flags(S, "loss", long=False) == 0 else " (NOT)"]),
    (CHOOSING, "Element mode ({:.1f}% of a step)", lambda: table_cells("monitor_overhead.md", "element",
                                                                       "observe / step")),
    (CHOOSING, "the monitor (`mode=\"tensor\"`, under 1% of a step){}", lambda: [""] if table_cells(
        "monitor_overhead.md", "tensor", "observe / step")[0] < 1 else [" (NOT)"]),
    (CHOOSING, "clean runs ({:.0f} per 1000 steps)",
     lambda: [1000 * sum(len(r["grad_events"]) for r in _element_clean())
              / sum(r["steps"] for r in _element_clean())]),
    (CHOOSING, "and {:,} training tokens ({} steps of {} x {})",
     lambda: [max(r["steps"] for r in runs(S)) * 8 * 64, max(r["steps"] for r in runs(S)), 8, 64]),
    # README.md
    ("README.md", "INT4 cost AdamW nothing measurable ({:+.3f}) and FP4 {:.2f}, and SPAM ({:+.3f}) and "
                  "Stable-SPAM "
                  "({:+.3f}) ended behind AdamW",
     lambda: [gap(LB, "natural", "int4 adamw", F32), gap(LB, "natural", "fp4 adamw", F32),
              gap(LB, "natural", "int4 spam", F32), gap(LB, "natural", "int4 stable-spam", F32)]),
    ("README.md", "Stable-SPAM was best on every seed (by {:.2f})", lambda: [_harsh_best_margin()]),
    ("README.md", "Stable-SPAM beat full-precision AdamW on every seed** ({:.3f} against {:.3f}; FP4 "
                  "{:.3f}) while SPAM "
                  "ended {:.2f} behind; at 10x the lr spikes arose in every run ({:.0f}-{:.0f} gradient "
                  "spikes per run, "
                  "mean per variant) and nobody diverged",
     lambda: [mean(LBS, "natural", "int4 stable-spam"), mean(LBS, *F32), mean(LBS, "natural", "fp4 "
                                                                                              "stable-spam"),
              gap(LBS, "natural", "int4 spam", F32), *_minmax(_harsh_spikes())]),
    ("README.md", "It costs {:.2f}x (`llama-9m`) to {:.2f}x (`spikegpt-1m`) an unquantized training "
                  "step on CPU for INT4, "
                  "{:.2f}-{:.2f}x for FP4",
     lambda: [*table_quant("int4"), *_minmax(table_quant("fp4"))]),
    ("README.md", "{} of {} injected gradient spikes on unclipped runs and, through the loss, all {} "
                  "bad batches, with "
                  "{} gradient and {} loss false flags in {:,} steps",
     lambda: [*recall(S, "grad", clipped=False), _bad_batch_recall()[1], flags(S, "grad"), flags(S, "loss"),
              sum(r["steps"] for r in runs(S))]),
    ("README.md", "CPU (`benchmarks/results/monitor_overhead.md`): {:.1f}% of a training step in tensor "
                  "mode, {:.1f}% in element mode",
     lambda: [*table_cells("monitor_overhead.md", "tensor", "observe / step"),
              *table_cells("monitor_overhead.md", "element", "observe / step")]),
    ("README.md", "its step is one C++ op since this round, {:.2f}x and {:.2f}x fused AdamW's at "
                  "LLaMA-20M and 60M shapes on one CPU core, where through torch passes it took "
                  "{:.0f}-{:.0f}x",
     lambda: [*table_cells(BANDWIDTH, "Stable-SPAM 8-bit state (default flags)", "x fused AdamW")[:2],
              *table_cells("optimizer_step_cpu_stable_spam_8bit.md",
                           "Stable-SPAM 8-bit state (default flags)", "x fused AdamW")]),
    ("README.md", "its step costs {:.2f}x and {:.2f}x fused AdamW's dense and {:.2f}x and {:.2f}x at density "
                  "0.25, at LLaMA-20M and 60M shapes on one CPU core",
     lambda: [*table_cells(BANDWIDTH, SPAM8[0], "x fused AdamW")[:2],
              *table_cells(BANDWIDTH, SPAM8[1], "x fused AdamW")[:2]]),
    ("README.md", "fused AdamW {:.2f} ns per parameter ({:.1f} GB/s; triad {:.1f} GB/s), SPAM {:.2f} ns, "
                  "SPAM at density 0.25 {:.2f} ns, 8-bit SPAM {:.2f} ns, Stable-SPAM {:.2f} ns",
     lambda: [table_cells(BANDWIDTH, "torch AdamW fused", "ns/param")[0],
              table_cells(BANDWIDTH, "torch AdamW fused", "GB/s")[0], triads(BANDWIDTH)[0],
              *(table_cells(BANDWIDTH, row, "ns/param")[0]
                for row in ("SPAM (default flags)", "SPAM density 0.25 (default flags)", SPAM8[0],
                            "Stable-SPAM (spam_opt, default flags)"))]),
    # docs/training.md
    ("docs/training.md", "({} gradient and {} loss flags in {} quantized runs; nothing is injected",
     lambda: [sum(len(r[k]) for r in _lowbit_quantized()) for k in ("grad_events", "loss_events")]
     + [len(_lowbit_quantized())]),
    ("docs/training.md", "INT4 AdamW ended at {:.3f} against {:.3f} in full precision, FP4 AdamW "
                         "{:.3f}; Stable-SPAM "
                         "{:.3f}, SPAM {:.3f}",
     lambda: [mean(LB, "natural", v) for v in ("int4 adamw", "fp32 adamw", "fp4 adamw", "int4 stable-spam",
                                               "int4 spam")]),
    ("docs/training.md", "Stable-SPAM was best on every seed ({:.3f} against AdamW's {:.3f})",
     lambda: [mean(LB, "harsh", "int4 stable-spam"), mean(LB, "harsh", "int4 adamw")]),
    ("docs/training.md", "INT4 Stable-SPAM ({:.3f}) and FP4 Stable-SPAM ({:.3f}) beat full-precision "
                         "AdamW ({:.3f}) on "
                         "every seed, as the paper's title says; INT4 AdamW {:.3f}; SPAM {:.3f}",
     lambda: [mean(LBS, "natural", v) for v in ("int4 stable-spam", "fp4 stable-spam", "fp32 adamw",
                                                "int4 adamw", "int4 spam")]),
    ("docs/training.md", "spikes arose in every run ({:.0f}-{:.0f} per run), nobody diverged, AdamW, "
                         "the guard, the "
                         "clip and Stable-SPAM ended within {:.3f}",
     lambda: [*_minmax(_harsh_spikes()), _spread(LBS, "harsh", ["int4 adamw", "int4 adamw+guard", "int4 "
                                                                                                  "adamw+clip1",
                                                                "int4 stable-spam"])]),
    ("docs/training.md", "up to {:.2f} nats in one step", lambda: [_lowbit_harsh_jump()]),
    # docs/spam.md
    ("docs/spam.md", "against {:.2f}x and {:.2f}x for float32 Stable-SPAM timed beside fused AdamW alone",
     lambda: _stable_spam_default_medians()),
    ("docs/spam.md", "31 interleaved rounds): 8-bit dense {:.2f}x at LLaMA-20M shapes and {:.2f}x at 60M; "
                     "density 0.25 with 8-bit state {:.2f}x and {:.2f}x (float32 SPAM {:.2f}x and {:.2f}x in "
                     "the same runs)",
     lambda: [*_step_ratios(SPAM8[0])[-2:], *_step_ratios(SPAM8[1])[-2:],
              *_step_ratios("SPAM (default flags)")[-2:]]),
    ("docs/spam.md", "so the state at density 0.25 is {:.2f}x AdamW's rather than 0.375x with int32 indices",
     lambda: [max(table_cells("optimizer_step_cpu_memory.md", "SPAM density 0.25 (default flags)",
                              "x AdamW state"))]),
    ("docs/spam.md", "interleaved with the slow 8-bit rows in that file it reads {:.2f}x and {:.2f}x",
     lambda: table_cells("optimizer_step_cpu_stable_spam_8bit.md", "Stable-SPAM (spam_opt, default flags)",
                         "x fused AdamW")),
    ("docs/spam.md", "(`benchmarks/results/optimizer_step_cpu_bandwidth.md`, 31 interleaved rounds, idle): "
                     "{:.2f}x and {:.2f}x at one thread, {:.2f}x and {:.2f}x at two.",
     lambda: table_cells(BANDWIDTH, "Stable-SPAM 8-bit state (default flags)", "x fused AdamW")),
    ("docs/spam.md", "8-bit dense costs {:.2f}x and {:.2f}x and density 0.25 with 8-bit state {:.2f}x and "
                     "{:.2f}x, "
                     "{:.2f} and {:.2f} bytes per parameter moved at {:.1f} and {:.1f} GB/s against fused "
                     "AdamW's {:.0f} bytes at {:.1f} GB/s",
     lambda: [*table_cells(BANDWIDTH, SPAM8[0], "x fused AdamW")[:2],
              *table_cells(BANDWIDTH, SPAM8[1], "x fused AdamW")[:2],
              *(table_cells(BANDWIDTH, row, "moved B/param")[0] for row in SPAM8),
              *(table_cells(BANDWIDTH, row, "GB/s")[0] for row in SPAM8),
              table_cells(BANDWIDTH, "torch AdamW fused", "moved B/param")[0],
              table_cells(BANDWIDTH, "torch AdamW fused", "GB/s")[0]]),
    ("docs/spam.md", "cost: {:.0f}x (LLaMA-20M shapes) and {:.0f}x (60M)",
     lambda: table_cells("optimizer_step_cpu_stable_spam_8bit.md", "Stable-SPAM 8-bit state (default flags)",
                         "x fused AdamW")),
    # memory FINDINGS
    ("benchmarks/results/memory/FINDINGS.md",
     "8-bit SPAM {:.2f}x fused AdamW dense and {:.2f}x at density 0.25 with 8-bit state; bitsandbytes' "
     "AdamW8bit "
     "{:.0f}x, torchao's {:.0f}x, GaLore {:.1f}x, Adam-mini {:.1f}x, Stable-SPAM with 8-bit state {:.0f}x",
     lambda: [memory_row(v)["step_ratio"] for v in ("spam-8bit", "spam-d0.25-8bit", "adamw8bit-bnb",
                                                    "adamw8bit-torchao", "galore", "adam-mini",
                                                    "stable-spam-8bit")]),
    ("benchmarks/results/memory/FINDINGS.md",
     "AdamW ends at {:.3f}; the 8-bit AdamWs ({:.3f}, {:.3f}), GaLore ({:.3f}) and Adam-mini ({:.3f})",
     lambda: [memory_row(v)["val_loss"] for v in ("adamw", "adamw8bit-bnb", "adamw8bit-torchao", "galore",
                                                  "adam-mini")]),
    ("benchmarks/results/memory/FINDINGS.md",
     "keeps {:.2f} bytes per parameter, {:.3f}x AdamW's 8, the least of all (at the 20M-60M shapes "
     "of `optimizer_step_cpu_memory.md`, where the block matrices weigh more, {:.3f}x). 8-bit SPAM dense "
     "and bitsandbytes' AdamW8bit keep {:.2f}-{:.2f} ({:.2f}x), torchao's AdamW8bit {:.2f} (small tensors "
     "stay in float32 there), SPAM at density 0.25 with float32 state {:.2f}, GaLore rank 32 {:.2f}, "
     "Adam-mini {:.2f}.",
     lambda: [memory_row("spam-d0.25-8bit")["bytes_per_param"],
              memory_row("spam-d0.25-8bit")["bytes_per_param"] / 8,
              *set(table_cells("optimizer_step_cpu_memory.md", SPAM8[1], "x AdamW state")),
              *_minmax(memory_row(v)["bytes_per_param"] for v in ("spam-8bit", "adamw8bit-bnb")),
              memory_row("spam-8bit")["bytes_per_param"] / 8,
              *[memory_row(v)["bytes_per_param"] for v in ("adamw8bit-torchao", "spam-d0.25", "galore",
                                                           "adam-mini")]]),
    ("benchmarks/results/memory/FINDINGS.md", "with 8-bit state** (a variant added later, "
     "`StableSPAM(state_bits=8)`): {:.3f}, level with AdamW and {:.3f} ahead of 8-bit SPAM at the same "
     "{:.2f} bytes",
     lambda: [memory_row("stable-spam-8bit")["val_loss"],
              memory_row("spam-8bit")["val_loss"] - memory_row("stable-spam-8bit")["val_loss"],
              memory_row("stable-spam-8bit")["bytes_per_param"]]),
    ("benchmarks/results/memory/FINDINGS.md", "8-bit dense {:.3f}, density 0.25 {:.3f}, density 0.25 "
                                              "with 8-bit state "
                                             "{:.3f}, {:.3f}-{:.3f} nats",
     lambda: [memory_row(v)["val_loss"] for v in ("spam-8bit", "spam-d0.25", "spam-d0.25-8bit")]
     + _memory_spam_gaps()),
]


def _lowbit_quantized() -> list[dict]:
    return [r for r in runs(LB) if r["regime"] == "natural" and r["optimizer"] != "fp32 adamw"]


def _step_ratios(row: str) -> list[float]:
    return table_cells("optimizer_step_cpu_memory.md", row, "x fused AdamW")


def _element_clean() -> list[dict]:
    return [r for r in runs("stability_element_monitor") if r["regime"] == "clean"]


def _bad_batch_recall() -> list[int]:
    hits = [any(a <= s <= b + 2 for s in r["loss_events"]) for r in runs(S) if r["regime"] == "bad-batch"
            for a, b in r["injections"]]
    return [sum(hits), len(hits)]


def _memory_spam_gaps() -> list[float]:
    base = memory_row("adamw")["val_loss"]
    spam = ("spam-8bit", "spam-d0.25", "spam-d0.25-8bit")
    return list(_minmax(memory_row(v)["val_loss"] - base for v in spam))


def _minmax(values) -> tuple[float, float]:
    values = list(values)
    return min(values), max(values)


def _lowbit_harsh_jump() -> float:
    def worst(r):
        losses = [v for _, v in r["curve"]]
        start = max(1, len(losses) // 20)
        return max(b - a for a, b in zip(losses[start - 1:], losses[start:]))

    return max(worst(r) for r in runs(LBS) if r["regime"] == "harsh" and r["optimizer"] == "int4 stable-spam")


def _harsh_spikes() -> list[float]:
    names = {r["optimizer"] for r in runs(LBS) if r["regime"] == "harsh"}
    return [statistics.fmean(len(r["grad_events"]) for r in runs(LBS) if r["regime"] == "harsh"
                             and r["optimizer"] == n) for n in names]


def table_quant(fmt: str) -> list[float]:
    return [float(line.split("|")[5].split("x")[0]) for line in
            (RESULTS / "quant_cost_cpu.md").read_text().splitlines() if line.startswith("| ") and
            line.split("|")[2].strip() == fmt]


def _stable_spam_default_medians() -> list[float]:
    """Stable-SPAM's medians over the three default-flag runs at 20M and 60M, from that file's run tables."""
    values = table_cells("optimizer_step_cpu_default_flags.md", "Stable-SPAM (spam_opt, default flags)",
                         "x fused AdamW")
    by_size = [values[i::3] for i in range(3)]  # each run's table lists 20M, 60M, 130M
    return [statistics.median(by_size[0]), statistics.median(by_size[1])]


def _text(doc: str) -> str:
    return " ".join((ROOT / doc).read_text().split())


def _filled(template: str, values: object) -> str:
    return " ".join(template.format(*(values() if callable(values) else values)).split())


@pytest.mark.parametrize(("doc", "template", "values"), CLAIMS,
                         ids=[f"{doc}:{template[:40]}" for doc, template, _ in CLAIMS])
def test_the_doc_quotes_the_committed_result(doc, template, values):
    filled = _filled(template, values)
    assert filled in _text(doc), f"{doc} should say, from the committed results:\n  {filled}"


# Numbers on docs/choosing.md that are settings, not results (the text they sit in says which).
SETTINGS = {"0.9M", "0.87M", "1.0", "0.25", "0.1%", "0.1", "128", "20"}


def test_every_number_on_choosing_is_a_checked_claim():
    claimed = " ".join(_filled(t, v) for d, t, v in CLAIMS if d == CHOOSING)
    numbers = set(re.findall(r"[-+]?\d+\.\d+", claimed))
    text = _text(CHOOSING)
    loose = [n for n in re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?:[xM%])?", text)
             if n not in SETTINGS and n.rstrip("xM%") not in numbers and n.lstrip("+-").rstrip("xM%") not in
             {x.lstrip("+-") for x in numbers}]
    assert not loose, f"docs/choosing.md quotes numbers no claim here checks: {loose}"


def sample_std(grid: str, regime: str, variant: str, round1: bool = False) -> float:
    return statistics.stdev(losses(grid, regime, variant, round1).values())


LOWBIT_LABELS = {"fp32 AdamW (reference)": "fp32 adamw", "INT4 AdamW": "int4 adamw",
                 "INT4 AdamW + spike guard": "int4 adamw+guard",
                 "INT4 AdamW + norm clip 1.0": "int4 adamw+clip1",
                 "INT4 Stable-SPAM": "int4 stable-spam", "INT4 SPAM + norm clip 1.0": "int4 spam+clip1",
                 "INT4 SPAM": "int4 spam", "FP4 (E2M1) AdamW": "fp4 adamw", "FP4 AdamW": "fp4 adamw",
                 "FP4 Stable-SPAM": "fp4 stable-spam", "FP4 (E2M1) Stable-SPAM": "fp4 stable-spam",
                 "FP4 SPAM": "fp4 spam"}
STABILITY_LABELS = {"AdamW": "adamw", "AdamW + norm clip 1.0": "adamw+clip1",
                    "AdamW + ZClip": "adamw+zclip", "AdamW + spike guard": "adamw+guard", "SPAM": "spam",
                    "SPAM + norm clip 1.0": "spam+clip1",
                    "SPAM density 0.25": "spam-d0.25", "Stable-SPAM": "stable-spam"}


def _findings_rows() -> list[tuple[str, str, object]]:
    """The FINDINGS tables of the low-bit grids (loss ± sample std, and the gap to fp32 AdamW) and of the
    LLaMA stability grid (each regime's change against the variant's clean loss), row by row."""
    claims = []
    for grid in (LB, LBS):
        doc = f"benchmarks/results/{grid}/FINDINGS.md"
        text = (ROOT / doc).read_text()
        for label, variant in LOWBIT_LABELS.items():
            for regime in ("natural", "harsh"):
                if f"| {label} |" not in text or not losses(grid, regime, variant):
                    continue
                cell = (f"| {label} | {{:.3f}} ± {{:.3f}} |" + (" {:+.3f} |" if regime == "natural" and
                                                               variant != "fp32 adamw" else ""))
                claims.append((doc, cell, lambda g=grid, r=regime, v=variant: [
                    mean(g, r, v), sample_std(g, r, v)] + ([gap(g, r, v, F32)] if r == "natural" and
                                                           v != "fp32 adamw" else [])))
    for label, variant in STABILITY_LABELS.items():
        claims.append(("benchmarks/results/stability/FINDINGS.md",
                       f"| {label} | {{:+.3f}} | {{:+.3f}} | {{:+.3f}} |",
                       lambda v=variant: [gap(S, g, v, ("clean", v)) for g in
                                          ("entry-spikes", "bad-batch", "spike-all")]))
    return claims


@pytest.mark.parametrize(("doc", "template", "values"), _findings_rows(),
                         ids=[f"{doc}:{template[:40]}" for doc, template, _ in _findings_rows()])
def test_the_findings_tables_hold_the_committed_results(doc, template, values):
    filled = _filled(template, values)
    assert filled in (ROOT / doc).read_text(), f"{doc} should hold, from the committed results:\n  {filled}"
