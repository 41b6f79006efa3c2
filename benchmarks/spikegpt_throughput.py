"""SpikeGPT against LLaMA at the same parameter count: training tokens/s and generate()'s time per new token.

For each pair (by default spikegpt-small against llama-20m, and spikegpt-60m against llama-60m: the same
width and depth, about the same parameters), both models train (forward, backward, AdamW step) on the
same random token batches, and decode greedily with ``generate()`` from the same prompt (batch 1;
SpikeGPT carries its recurrent state, LLaMA its key/value cache). Rounds are interleaved, and
``benchmarks/machine_load.py`` waits for an idle machine and marks the table when it was not. The time
per new token is the time between generate()'s new tokens after the first one (which comes with the
prompt's forward pass). ``--reference`` adds SpikeGPT on its pure-PyTorch paths, to show what its
kernels buy (``trainers/models/spikegpt_kernels.py``: C++ on CPU, Triton on CUDA).

    python benchmarks/spikegpt_throughput.py                         # both pairs, CPU
    python benchmarks/spikegpt_throughput.py --pair spikegpt-small:llama-20m --threads 1 --reference
    python benchmarks/spikegpt_throughput.py --device cuda --batch-size 32 --seq-len 512
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import provenance  # noqa: E402
from machine_load import add_wait_argument, interleave, spread, watch  # noqa: E402

from trainers.models import build_model  # noqa: E402
from trainers.models.spikegpt_kernels import backend  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PAIRS = ["spikegpt-small:llama-20m", "spikegpt-60m:llama-60m"]
REFERENCE = " (reference paths)"  # the label suffix of SpikeGPT on its pure-PyTorch paths
TRAIN_TARGET, DECODE_TARGET = 1.2, 1.0  # LLaMA / SpikeGPT, at most: issue 19's goal


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Contender:
    """One model as the benchmark runs it: its optimizer, and the paths it runs on."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, reference: bool) -> None:
        torch.manual_seed(0)
        eos = args.vocab_size - 1
        self.model = build_model(name, args.vocab_size, args.seq_len, eos_token_id=eos).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.paths = (lambda: backend("reference")) if reference else contextlib.nullcontext
        self.device = device
        self.parameters = sum(p.numel() for p in self.model.parameters())

    def train(self, batches: list[torch.Tensor]) -> float:
        """Seconds for one optimizer step per batch, the host waiting for the device at both ends."""
        self.model.train()
        with self.paths():
            _sync(self.device)
            start = time.perf_counter()
            for batch in batches:
                self.model(input_ids=batch, labels=batch).loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            _sync(self.device)
        return time.perf_counter() - start

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> float:
        """Seconds per new token after the first (whose time is the prompt's forward pass), as generate()
        hands them out greedily."""
        self.model.eval()
        clock = _TokenClock()
        with self.paths():
            self.model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                streamer=clock)
        return (clock.times[-1] - clock.times[1]) / (new_tokens - 1)


class _TokenClock(BaseStreamer):
    """A generate() streamer that notes when the prompt, then each new token, reaches the host."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _contenders(pair: str, args: argparse.Namespace, device: torch.device) -> dict[str, Contender]:
    spikegpt, llama = pair.split(":")
    contenders = {spikegpt: Contender(spikegpt, args, device, reference=False),
                  llama: Contender(llama, args, device, reference=False)}
    if args.reference:
        contenders[spikegpt + REFERENCE] = Contender(spikegpt, args, device, reference=True)
    return contenders


def _measure(contenders: dict[str, Contender], args: argparse.Namespace, device: torch.device,
             max_wait: float) -> tuple[dict[str, list[float]], dict[str, list[float]], str]:
    """Training seconds per round and decoding seconds per token per round, by contender, and the load."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen).to(device)
               for _ in range(args.steps)]
    prompt = torch.randint(0, args.vocab_size - 1, (1, args.prompt_len), generator=gen).to(device)
    for c in contenders.values():  # warm-up: allocator, kernels (built here on first use), optimizer state
        c.train(batches[:1])
        c.decode(prompt, 2)

    def trainer(c: Contender) -> Callable[[], float]:
        return lambda: c.train(batches)

    def decoder(c: Contender) -> Callable[[], float]:
        return lambda: c.decode(prompt, args.new_tokens)

    with watch(max_wait) as load:
        train = interleave({name: trainer(c) for name, c in contenders.items()}, args.rounds)
        decode = interleave({name: decoder(c) for name, c in contenders.items()}, args.rounds)
    return train, decode, load.summary()


def _table(pair: str, contenders: dict[str, Contender], train: dict[str, list[float]],
           decode: dict[str, list[float]], tokens: int) -> list[str]:
    spikegpt, llama = pair.split(":")
    lines = [f"## {spikegpt} vs {llama}", "",
             "| model | parameters | training tokens/s, median (min..max) | generate() ms per new token, "
             "median (min..max) |", "|---|---:|---:|---:|"]
    for name, c in contenders.items():
        rates = [tokens / s for s in train[name]]
        lines.append(f"| {name} | {c.parameters / 1e6:.2f}M | {spread(rates, digits=0)} | "
                     f"{spread(decode[name], scale=1e3, digits=2)} |")
    train_ratio = statistics.median(train[spikegpt]) / statistics.median(train[llama])
    decode_ratio = statistics.median(decode[spikegpt]) / statistics.median(decode[llama])

    def verdict(ratio: float, goal: float) -> str:
        return f"**{ratio:.2f}x** (goal: at most {goal}x, {'met' if ratio <= goal else 'missed'})"

    lines += ["", f"LLaMA / SpikeGPT training throughput: {verdict(train_ratio, TRAIN_TARGET)}; "
              f"SpikeGPT / LLaMA time per new token: {verdict(decode_ratio, DECODE_TARGET)}."]
    if spikegpt + REFERENCE in contenders:
        ref = statistics.median(train[spikegpt + REFERENCE]) / statistics.median(train[spikegpt])
        kernels = "Triton kernels" if next(iter(contenders.values())).device.type == "cuda" else "CPU kernels"
        lines.append(f"SpikeGPT's {kernels} train {ref:.2f}x as fast as its reference paths.")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", default=None, metavar="SPIKEGPT:LLAMA",
                        help=f"presets to compare (repeatable; default {' and '.join(PAIRS)})")
    parser.add_argument("--vocab-size", type=int, default=257, help="the byte tokenizer's size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per model per round")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generate() adds per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help="also time SpikeGPT on its reference paths")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="markdown file (default: results/spikegpt_throughput"
                        "_<device>.md; '-' prints only)")
    add_wait_argument(parser)
    args = parser.parse_args(argv)
    pairs = args.pair or PAIRS
    if any(p.count(":") != 1 for p in pairs):
        parser.error(f"--pair takes SPIKEGPT:LLAMA, two presets joined by a colon; got {pairs}")
    if args.rounds < 1 or args.steps < 1 or args.new_tokens < 2:
        parser.error("--rounds and --steps must be at least 1, --new-tokens at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch threads"
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = ["```", f"$ {command}", "```", "",
             f"# SpikeGPT vs LLaMA: training and generation ({where}, torch {torch.__version__})", "",
             f"Training: batch {args.batch_size} x {args.seq_len} tokens, AdamW, {args.rounds} interleaved "
             f"rounds of {args.steps} steps. Generation: batch 1, a {args.prompt_len}-token prompt, "
             f"{args.new_tokens} new tokens, greedy; the time per new token leaves the prompt's forward pass "
             "out.", ""]
    tokens = args.batch_size * args.seq_len * args.steps
    for pair in pairs:
        contenders = _contenders(pair, args, device)
        train, decode, load = _measure(contenders, args, device, args.max_wait)
        table = [load, "", *_table(pair, contenders, train, decode, tokens)]
        print("\n".join(table), file=sys.stderr)
        lines += table
    provenance.publish("\n".join(lines), args.output or RESULTS / f"spikegpt_throughput_{device.type}.md")


if __name__ == "__main__":
    main()
