"""How many kernels one optimizer step launches on each CUDA path, at LLaMA models' parameter counts.

On a GPU the foreach steps are launch-bound (benchmarks/results/gpu_run.md): their time follows the number of
parameters, not of bytes. This counts, for one step after two warm-up steps, the aten ops that are neither
views nor host reads (``op_counter.OpCounter``: about one kernel each) and the Triton launches, for the steps
CUDA runs: torch's AdamW (fused and foreach, for scale), our foreach steps (CUDA's default) and our Triton
steps (``fused=True``). The counts depend on the number of parameters, not on their sizes, so each LLaMA shape
is scaled down 16 times per dimension and the steps run on CPU tensors; the Triton launches are counted, not
run (``tests/test_triton_steps.py`` runs them, in Triton's interpreter). Beside the counts, the step times
measured on a GPU (``optimizer_step_cuda.md``), where there are some, and their time per launch.

    python benchmarks/optimizer_launches.py                  # 20m, 130m and 350m parameter lists

Writes ``results/optimizer_launches.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":  # before triton is imported: the Triton steps run in the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import provenance  # noqa: E402
from op_counter import CountedLaunches, OpCounter  # noqa: E402
from optimizer_step import shapes_of  # noqa: E402

from spam_opt import SPAM, StableSPAM  # noqa: E402
from spam_opt.kernels.dispatch import Candidate  # noqa: E402
from spam_opt.kernels.spam import triton_kernel as spam_triton  # noqa: E402
from spam_opt.kernels.spam.foreach import spam_foreach  # noqa: E402
from spam_opt.kernels.stable_spam import triton_kernel as stable_triton  # noqa: E402
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GPU_TIMES = RESULTS / "optimizer_step_cuda.md"
SCALE = 16  # every dimension of a LLaMA shape divided by this (at least 1): same count, small tensors

# label -> (optimizer factory, the row of optimizer_step_cuda.md with its GPU time, or None)
Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
PATHS: dict[str, tuple[Factory, str | None]] = {
    "torch AdamW fused": (lambda ps: torch.optim.AdamW(ps, fused=True), "torch AdamW fused"),
    "torch AdamW foreach": (lambda ps: torch.optim.AdamW(ps, foreach=True), "torch AdamW foreach"),
    "SPAM foreach (CUDA default)": (lambda ps: SPAM(ps, clip_delay=0, foreach=True), "SPAM (default flags)"),
    "SPAM density 0.25 foreach": (lambda ps: SPAM(ps, clip_delay=0, density=0.25, foreach=True),
                                  "SPAM density 0.25 (default flags)"),
    "SPAM 8-bit state foreach": (lambda ps: SPAM(ps, clip_delay=0, state_bits=8, foreach=True),
                                 "SPAM 8-bit state (default flags)"),
    "SPAM density 0.25, 8-bit state foreach": (
        lambda ps: SPAM(ps, clip_delay=0, density=0.25, state_bits=8, foreach=True),
        "SPAM density 0.25, 8-bit state (default flags)"),
    "Stable-SPAM foreach (CUDA default)": (lambda ps: StableSPAM(ps, foreach=True),
                                           "Stable-SPAM (spam_opt, default flags)"),
    "Stable-SPAM 8-bit state foreach": (lambda ps: StableSPAM(ps, state_bits=8, foreach=True),
                                        "Stable-SPAM 8-bit state (default flags)"),
    "SPAM Triton (fused=True)": (lambda ps: SPAM(ps, clip_delay=0, fused=True), None),
    "SPAM density 0.25 Triton (fused=True)": (lambda ps: SPAM(ps, clip_delay=0, density=0.25, fused=True),
                                              None),
    "SPAM 8-bit state Triton (fused=True)": (lambda ps: SPAM(ps, clip_delay=0, state_bits=8, fused=True),
                                             None),
    "SPAM density 0.25, 8-bit state Triton (fused=True)": (
        lambda ps: SPAM(ps, clip_delay=0, density=0.25, state_bits=8, fused=True), None),
    "Stable-SPAM Triton (fused=True)": (lambda ps: StableSPAM(ps, fused=True), None),
    "Stable-SPAM 8-bit state Triton (fused=True)": (lambda ps: StableSPAM(ps, state_bits=8, fused=True),
                                                    None),
}


def triton_on_this_device(device: torch.device, run: bool = True) -> tuple[list[CountedLaunches],
                                                                          Callable[[], None]]:
    """Make ``fused=True`` pick the Triton steps on ``device`` (CPU included, in the interpreter) with
    counted launches, run or not (``CountedLaunches``); returns the counters and what undoes it."""
    spam_kernels = tuple(CountedLaunches(k, run) for k in spam_triton._kernels())
    stable_kernels = tuple(CountedLaunches(k, run) for k in stable_triton._kernels())
    saved = (spam_triton._kernels, stable_triton._kernels, SPAM.kernels, StableSPAM.kernels)
    spam_triton._kernels = lambda: spam_kernels
    stable_triton._kernels = lambda: stable_kernels
    for cls, kernel in ((SPAM, spam_triton.spam_triton_with(spam_foreach)),
                        (StableSPAM, stable_triton.stable_spam_triton_with(stable_spam_foreach))):
        others = tuple(c for c in cls.kernels.candidates(device) if not c.fused)
        cls.kernels = dataclasses.replace(cls.kernels, devices={
            **cls.kernels.devices, device.type: (Candidate("Triton", kernel, fused=True), *others)})

    def undo() -> None:
        spam_triton._kernels, stable_triton._kernels, SPAM.kernels, StableSPAM.kernels = saved

    return [*spam_kernels, *stable_kernels], undo


def count_step(make: Factory, shapes: list[tuple[int, ...]],
               launches: list[CountedLaunches]) -> dict[str, int]:
    """One step's counts (after two warm-up steps) of ``make`` over parameters of ``shapes``."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = make(params)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        before = sum(k.count for k in launches)
        with OpCounter() as counter:
            opt.step()
    triton = sum(k.count for k in launches) - before
    return dict(ops=counter.launches, triton=triton, launches=counter.launches + triton)


def scaled_shapes(size: str) -> list[tuple[int, ...]]:
    return [tuple(max(1, d // SCALE) for d in shape) for _, shape in shapes_of(size)]


def gpu_times() -> dict[tuple[str, str], float]:
    """(size, row) -> step ms from the committed GPU table (its sections name their LLaMA size)."""
    times, size = {}, None
    for line in GPU_TIMES.read_text().splitlines() if GPU_TIMES.exists() else []:
        if match := re.match(r"## LLaMA (\w+) shapes", line):
            size = match.group(1)
        elif line.startswith("| ") and size is not None:
            cells = [c.strip() for c in line.strip("|").split("|")]
            with_ms = re.fullmatch(r"[0-9.]+", cells[1])
            if with_ms:
                times[size, cells[0]] = float(cells[1])
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20m,130m,350m", help="comma-separated LLaMA sizes (1b has 350m's "
                        "219 parameters)")
    parser.add_argument("--output", default=str(RESULTS / "optimizer_launches.md"), help="'-' prints only")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",")]
    launches, undo = triton_on_this_device(torch.device("cpu"), run=False)
    times = gpu_times()
    try:
        counted = {(size, label): count_step(make, scaled_shapes(size), launches)
                   for size in sizes for label, (make, _) in PATHS.items()}
    finally:
        undo()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = ["```", f"$ {command}", "```", "",
             f"# Kernels launched by one optimizer step (torch {torch.__version__})", "",
             "Launches: aten ops that are neither views nor host reads (`.item()`), plus Triton launches "
             "(counted, not run), counted on CPU tensors (the counts do not depend on the device or on the "
             "tensors' sizes). A `_foreach_` op or torch's fused AdamW counts as one, though it launches a "
             "few kernels on a GPU for many tensors. GPU ms: the step on one H200 at full size "
             f"({GPU_TIMES.name}), where measured; us/launch: that time over the launches.", ""]
    for size in sizes:
        n = len(scaled_shapes(size))
        lines += [f"## LLaMA {size} ({n} parameters)", "",
                  "| path | aten ops | Triton launches | launches | per parameter | GPU ms | us/launch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, (_, row) in PATHS.items():
            c = counted[size, label]
            ms = times.get((size, row)) if row else None
            gpu = f"{ms:.1f} | {1000 * ms / c['launches']:.1f}" if ms is not None else "- | -"
            lines.append(f"| {label} | {c['ops']} | {c['triton']} | {c['launches']} | "
                         f"{c['launches'] / n:.1f} | {gpu} |")
        lines.append("")
    provenance.publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
