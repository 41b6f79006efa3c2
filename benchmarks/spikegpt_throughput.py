"""Training throughput (tokens/s) of a SpikeGPT preset against a LLaMA preset of about the same size.

Both models train (forward, backward, AdamW step) on the same random token batches in one process, timed
in interleaved rounds so that background load hits both alike; the table reports the median round.

    python benchmarks/spikegpt_throughput.py                       # spikegpt-small vs llama-20m, CPU
    python benchmarks/spikegpt_throughput.py --device cuda --batch-size 32 --seq-len 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainers.models import build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
                 device: torch.device) -> float:
    """Seconds for one optimizer step per batch, measured after the host waits for the device."""
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spikegpt", default="spikegpt-small")
    parser.add_argument("--llama", default="llama-20m")
    parser.add_argument("--vocab-size", type=int, default=257, help="the byte tokenizer's size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="markdown table (default: results/spikegpt_throughput"
                        "_<device>.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    models = {name: build_model(name, args.vocab_size, args.seq_len).to(device)
              for name in (args.spikegpt, args.llama)}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=device)
               for _ in range(args.steps)]
    for name, model in models.items():  # warm-up: allocator, kernels, optimizer state
        model.train()
        _train_steps(model, optimizers[name], batches[:1], device)

    load_before = os.getloadavg()[0]  # other jobs on the machine skew both models, but not equally
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            seconds[name].append(_train_steps(model, optimizers[name], batches, device))

    tokens = args.batch_size * args.seq_len * args.steps
    rate = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    ratio = rate[args.llama] / rate[args.spikegpt]
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"$ .venv/bin/python benchmarks/spikegpt_throughput.py {flags}".strip()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch threads"
    lines = [
        "```", command, "```",
        "",
        f"# SpikeGPT vs LLaMA training throughput ({where}, torch {torch.__version__})",
        "",
        f"batch {args.batch_size} x {args.seq_len} tokens, AdamW, {args.rounds} interleaved rounds of "
        f"{args.steps} steps each; median round. Load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs).",
        "",
        "| model | parameters | tokens/s (median) | tokens/s (min..max) |",
        "|---|---:|---:|---:|",
    ]
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        rates = sorted(tokens / s for s in seconds[name])
        spread = f"{rates[0]:,.0f}..{rates[-1]:,.0f}"
        lines.append(f"| {name} | {params / 1e6:.2f}M | {rate[name]:,.0f} | {spread} |")
    verdict = "within" if ratio <= 1.5 else "outside"
    lines += ["", f"LLaMA / SpikeGPT throughput: **{ratio:.2f}x** ({verdict} the 1.5x target)."]
    output = Path(args.output) if args.output else RESULTS / f"spikegpt_throughput_{device.type}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
