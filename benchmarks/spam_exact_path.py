"""What SPAM's step costs when no vector can take the plain Adam update.

The C++ kernel decides per vector of entries whether any is a spike (or has a NaN/Inf gradient); only
those vectors pay for the clip's sqrt and selects. This times, side by side in one process on the LLaMA
shapes of ``optimizer_step.py``: torch's fused AdamW, SPAM on an ordinary gradient, and SPAM on a
gradient with a 10^4x spike in every 8th entry (so every AVX2 vector clips). The moments are restored
after each spiky step, so that every round clips the same entries.

    python benchmarks/spam_exact_path.py --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from machine_load import add_wait_argument, interleave, spread, watch
from optimizer_step import BASELINE, SIZES, llama_shapes
from provenance import timing_line  # beside this script, as optimizer_step (run as a file)

from spam_opt import SPAM


def _timed(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> float:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="20m", choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "spam_exact_path_cpu.md"))
    add_wait_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = llama_shapes(*SIZES[args.size])
    init = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    plain = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    spiky = [g.clone() for g in plain]
    for g in spiky:
        g.view(-1)[::8] *= 1e4

    adamw_params = [torch.nn.Parameter(t.clone()) for t in init]
    spam_params = [torch.nn.Parameter(t.clone()) for t in init]
    adamw = torch.optim.AdamW(adamw_params, fused=True)
    spam = SPAM(spam_params, clip_delay=0)
    for _ in range(2):  # state, the kernel build, and v > 0 everywhere before the timed rounds
        _timed(adamw, adamw_params, plain)
        _timed(spam, spam_params, plain)
    ordinary, spiked = "SPAM, ordinary gradient", "SPAM, a spike in every vector"
    clipped = 0

    def spiky_step() -> float:
        nonlocal clipped
        saved = [(spam.state[p]["exp_avg"].clone(), spam.state[p]["exp_avg_sq"].clone()) for p in spam_params]
        seconds = _timed(spam, spam_params, spiky)
        clipped = int(spam.spike_stats().clipped.sum())
        for p, (m, v) in zip(spam_params, saved):
            spam.state[p]["exp_avg"].copy_(m)
            spam.state[p]["exp_avg_sq"].copy_(v)
        return seconds

    with watch(args.max_wait) as load:
        times = interleave({BASELINE: lambda: _timed(adamw, adamw_params, plain),
                            ordinary: lambda: _timed(spam, spam_params, plain),
                            spiked: spiky_step}, args.rounds)

    base = statistics.median(times[BASELINE])
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = [f"Command: `{command}`", "",
             f"LLaMA {args.size} shapes ({sum(p.numel() for p in spam_params) / 1e6:.1f}M parameters), torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} interleaved rounds; "
             f"the spiky step clipped {clipped} entries.", "", timing_line(load.summary()), "",
             "| step | ms, median (min..max) | x fused AdamW |", "|---|---:|---:|"]
    for label, values in times.items():
        lines.append(f"| {label} | {spread(values, scale=1e3)} | {statistics.median(values) / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
