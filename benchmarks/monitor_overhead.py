"""Overhead of GradientSpikeMonitor.observe() on a training step of a small LLaMA.

Runs forward + backward + AdamW on a randomly initialised LLaMA (hidden 256, 4 layers, sequence 256 by
default) with no monitor, with the monitor in ``tensor`` mode and in ``element`` mode, interleaving the three
so that machine load hits them alike (``machine_load.py`` waits for an idle machine first and marks the
table when it was not). Reports the median step time with its range, the median time spent inside
``observe()`` (logging steps included, so the batched transfer is amortised as in a real run) and its share
of a step. On CUDA, step times include a synchronisation, and ``observe()`` at non-logging steps runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation.

    python -m benchmarks.monitor_overhead --steps 30 --out benchmarks/results/monitor_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import provenance
from benchmarks.machine_load import add_wait_argument, spread, watch
from spam_opt.monitor import GradientSpikeMonitor

VARIANTS = ("none", "tensor", "element")


def _model(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                         max_position_embeddings=args.seq)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(args.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    device = torch.device(args.device)
    models, opts, monitors = {}, {}, {}
    scratch = tempfile.TemporaryDirectory(prefix="monitor_overhead_")  # the logs are written, then dropped
    tmp = Path(scratch.name)
    for name in VARIANTS:  # one model per variant: the same work, and element mode keeps its own state
        models[name] = _model(args)
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
        if name != "none":
            monitors[name] = GradientSpikeMonitor(models[name], opts[name], run_dir=tmp / name, mode=name,
                                                  log_every=args.log_every)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
               for _ in range(4)]
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "observe": []} for n in VARIANTS}
    for step in range(1, args.warmup + args.steps + 1):
        order = VARIANTS[step % 3:] + VARIANTS[:step % 3]  # rotate who runs first
        for name in order:
            model, opt, batch = models[name], opts[name], batches[step % len(batches)]
            _sync(device)
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            observe = 0.0
            if name in monitors:
                checked = device.type == "cuda" and step % args.log_every != 0
                if checked:
                    torch.cuda.set_sync_debug_mode("error")
                t0 = time.perf_counter()
                monitors[name].observe(step, loss=loss.detach())
                observe = time.perf_counter() - t0
                if checked:
                    torch.cuda.set_sync_debug_mode("default")
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if step > args.warmup:
                times[name]["step"].append(time.perf_counter() - start)
                times[name]["observe"].append(observe)
    for monitor in monitors.values():
        monitor.close()
    scratch.cleanup()
    return times


def paired_overhead(step: list[float], base: list[float]) -> tuple[float, float, float]:
    """Median over rounds of this variant's step over the no-monitor step of the same round, minus 1, with a
    distribution-free 95% interval for that median (order statistics of the sorted ratios): pairing by
    round cancels the load that hits all three variants of a round alike, which whole-step medians keep.

        >>> paired_overhead([1.02] * 9 + [1.5], [1.0] * 10)
        (0.02, 0.02, 0.5)
    """
    ratios = sorted(s / b - 1 for s, b in zip(step, base, strict=True))
    n = len(ratios)
    half = 1.96 * n ** 0.5 / 2
    low, high = max(0, int(n / 2 - half)), min(n - 1, int(n / 2 + half + 0.999))
    return round(statistics.median(ratios), 12), round(ratios[low], 12), round(ratios[high], 12)


def table(args: argparse.Namespace, times: dict[str, dict[str, list[float]]], load: str) -> str:
    base = statistics.median(times["none"]["step"])
    params = sum(p.numel() for p in _model(args).parameters())
    lines = [
        f"Command: `{provenance.module_command('monitor_overhead', None)}`",
        "",
        f"LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"{params / 1e6:.1f}M parameters; batch {args.batch} x seq {args.seq}; AdamW; device {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.steps} measured steps per "
        f"variant after {args.warmup} warm-up steps, interleaved; monitor log_every={args.log_every}.",
        "",
        load,
        "",
        "| monitor | step ms, median (min..max) | median observe() (ms) | mean observe() (ms) | "
        "observe / step | step vs none | step vs none, paired by round (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        step = statistics.median(times[name]["step"])
        obs_med = statistics.median(times[name]["observe"]) * 1e3
        obs_mean = statistics.fmean(times[name]["observe"]) * 1e3
        share = obs_mean / (step * 1e3)
        steps = spread(times[name]["step"], scale=1e3)
        mid, low, high = paired_overhead(times[name]["step"], times["none"]["step"])
        lines.append(f"| {name} | {steps} | {obs_med:.2f} | {obs_mean:.2f} | {share:.2%} | "
                     f"{(step - base) / base:+.1%} | {mid:+.2%} ({low:+.2%}..{high:+.2%}) |")
    lines += ["", "`observe / step` is the mean time inside `observe()` (every step, logging steps "
              "included) over the median step: the monitor's cost. `step vs none` compares whole-step "
              "medians, which on a shared machine carry a few percent of noise either way; the paired "
              "column takes each round's three steps (run back to back, in rotating order) as a pair and "
              "gives the median of the per-round ratios with a 95% interval (order statistics): an "
              "overhead is resolved when its interval excludes 0."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    add_wait_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with watch(args.max_wait) as load:
        times = run(args)
    text = table(args, times, provenance.timing_line(load.summary()))
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
