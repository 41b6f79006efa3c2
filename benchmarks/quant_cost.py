"""The cost of fake quantization: training tokens/s of quantized vs unquantized grid models.

Each model (same initial weights) trains unquantized and in every requested format (forward, backward,
AdamW step) on the same random token batches, in interleaved rounds whose order rotates, so that
background load hits all variants alike, inside ``machine_load.watch`` (it waits for an idle machine and
the table says whether it was). The table reports the median round, the spread over rounds, and the
slowdown against the unquantized model (the median of the per-round ratios), with the command and commit.

    python -m benchmarks.quant_cost                          # llama-9m and spikegpt-1m, the grid's shape
    python -m benchmarks.quant_cost --mixed-precision bf16 --output /tmp/quant_cost_cpu_bf16.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

from benchmarks import provenance
from benchmarks.machine_load import add_wait_argument, watch
from trainers.models import build_model
from trainers.quant import QUANT_FORMATS, QuantConfig, quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 2.0  # the goal: INT4 training at most this many times slower than unquantized training


def _train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
                 autocast: bool) -> float:
    """Seconds for one optimizer step per batch."""
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-9m,spikegpt-1m", help="comma-separated presets")
    parser.add_argument("--formats", default="int8,int4,fp4,fp4-e1m2",
                        help=f"comma-separated, from {', '.join(QUANT_FORMATS[1:])}")
    parser.add_argument("--group-size", type=int, default=32, help="32 divides the small models' widths")
    parser.add_argument("--no-activations", action="store_true", help="quantize weights only")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--vocab-size", type=int, default=257, help="the byte tokenizer's size")
    parser.add_argument("--batch-size", type=int, default=8, help="the stability grids' shape: 8 x 64")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per variant per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="markdown table (default: results/quant_cost_cpu.md)")
    add_wait_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = ["none", *(f for f in args.formats.split(",") if f and f != "none")]

    variants: dict[tuple[str, str], tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = build_model(name, args.vocab_size, args.seq_len)
        for fmt in formats:
            model = copy.deepcopy(base)
            quantize_model(model, QuantConfig(format=fmt, group_size=args.group_size,
                                              activations=not args.no_activations))
            model.train()
            variants[name, fmt] = model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len)) for _ in range(args.steps)]
    autocast = args.mixed_precision == "bf16"
    for model, optimizer in variants.values():  # warm-up: allocator, kernels, optimizer state
        _train_steps(model, optimizer, batches[:1], autocast)

    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    keys = list(variants)
    with watch(args.max_wait) as load:
        for round_ in range(args.rounds):
            shift = round_ % len(keys)  # rotate: no variant always runs first, or after the same one
            for key in keys[shift:] + keys[:shift]:
                seconds[key].append(_train_steps(*variants[key], batches, autocast))

    tokens = args.batch_size * args.seq_len * args.steps
    activations = "not quantized" if args.no_activations else "quantized"
    lines = [
        f"# Fake-quantization cost (CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__})",
        "", f"Command: `{provenance.module_command('quant_cost', argv)}`", "",
        provenance.timing_line(load.summary()), "",
        f"Training steps (forward, backward, fused AdamW) at batch {args.batch_size} x {args.seq_len} "
        f"tokens, group size {args.group_size}, activations {activations}, mixed precision "
        f"{args.mixed_precision}; {args.rounds} interleaved rounds of {args.steps} steps per variant. "
        "Slowdown: median over rounds of the round's time against the same model unquantized.",
        "",
        "| model | format | tokens/s (median) | tokens/s (min..max) | slowdown (median, min..max) |",
        "|---|---|---:|---:|---:|",
    ]
    slowdown: dict[tuple[str, str], float] = {}
    for name, fmt in keys:
        rates = sorted(tokens / s for s in seconds[name, fmt])
        ratios = sorted(q / b for q, b in zip(seconds[name, fmt], seconds[name, "none"]))
        slowdown[name, fmt] = statistics.median(ratios)
        lines.append(f"| {name} | {fmt} | {statistics.median(rates):,.0f} | "
                     f"{rates[0]:,.0f}..{rates[-1]:,.0f} | "
                     f"{slowdown[name, fmt]:.2f}x ({ratios[0]:.2f}..{ratios[-1]:.2f}) |")
    int4 = [ratio for (_, fmt), ratio in slowdown.items() if fmt == "int4"]
    if int4:
        verdict = "within" if max(int4) <= TARGET else "outside"
        lines += ["", f"INT4 slowdown: **{max(int4):.2f}x** at worst ({verdict} the {TARGET:g}x target)."]
    output = Path(args.output) if args.output else RESULTS / "quant_cost_cpu.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
