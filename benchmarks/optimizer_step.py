"""Time one optimizer step and count optimizer-state bytes on the parameter shapes of small LLaMA models.

Every optimizer steps the same parameters and gradients in one process; the timed steps are interleaved
(one step of each optimizer per round), so a burst of load from elsewhere hits them all alike. The first
step (state creation, and building the C++ kernel or compiling ``torch.compile`` based paths when their
cache is cold) is reported on its own.

The step is memory-bound, so every row also gives its time per parameter and the bandwidth it reached: the
bytes the step must move (read g, read and write p, read and write the state, read the kept-entry indices
of sparse momentum once) over its time, beside the machine's own bandwidth measured in the same rounds by a
triad loop (a = b + s·c over arrays far larger than the caches, at the same thread count). A ratio then reads
as bytes and time: an optimizer that moves 0.6x AdamW's bytes at the same bandwidth takes 0.6x its time.

    python benchmarks/optimizer_step.py                       # 20M, 60M, 130M on CPU, writes the results
    python benchmarks/optimizer_step.py --sizes 20m --rounds 3 --threads 1,2
    python benchmarks/optimizer_step.py --only 'default flags' --rounds 31   # many rounds of the fast ones
    python benchmarks/optimizer_step.py --sizes blocks --only 'density 0.25'  # the block matrices alone
    python benchmarks/optimizer_step.py --only 'default flags' --rounds 31 --runs 3  # three fresh runs

A ratio also depends on where a run's tensors landed in memory: on a shared machine one process can measure
a row 20% apart from the next. ``--runs N`` repeats each size with fresh parameters, gradients and
optimizers; the table then gives each row's median over the runs, and every run's ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import provenance
import torch
from machine_load import add_wait_argument, watch

from spam_opt.state_bytes import state_bytes

# The LLaMA configs of the SPAM paper (hidden, intermediate, layers), vocabulary 32000, untied head.
SIZES = {"20m": (256, 688, 4), "60m": (512, 1376, 8), "130m": (768, 2048, 12), "350m": (1024, 2736, 24),
         "1b": (2048, 5461, 24)}
HEADS = {"20m": 4, "60m": 8, "130m": 12, "350m": 16, "1b": 32}
VOCAB = 32000
# The block matrices alone, the parameters sparse momentum applies to (spam_opt.param_groups): 16 of 1024 x
# 1024 and 12 of 2752 x 1024 (LLaMA-350M's attention and MLP shapes), far larger than the caches.
BLOCKS = "blocks"
BLOCK_SHAPES = [(1024, 1024)] * 16 + [(2752, 1024)] * 12
# The triad's arrays: 3 x 64 MiB, well beyond any L3 here.
TRIAD_ENTRIES = 1 << 24
# Every ratio is against this optimizer, measured in the same process.
BASELINE = "torch AdamW fused"


def llama_shapes(hidden: int, intermediate: int, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter, named as in Hugging Face's LLaMA (Adam-mini partitions by name)."""
    mlp = [("mlp.gate_proj", (intermediate, hidden)), ("mlp.up_proj", (intermediate, hidden)),
           ("mlp.down_proj", (hidden, intermediate))]
    attn = [(f"self_attn.{x}_proj", (hidden, hidden)) for x in "qkvo"]
    norms = [("input_layernorm", (hidden,)), ("post_attention_layernorm", (hidden,))]
    layer = attn + mlp + norms
    return ([("model.embed_tokens.weight", (VOCAB, hidden))]
            + [(f"model.layers.{i}.{name}.weight", shape) for i in range(layers) for name, shape in layer]
            + [("model.norm.weight", (hidden,)), ("lm_head.weight", (VOCAB, hidden))])


def shapes_of(size: str) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) list of a size: a LLaMA config of SIZES, or BLOCKS."""
    if size == BLOCKS:
        return [(f"block.{i}.weight", shape) for i, shape in enumerate(BLOCK_SHAPES)]
    return llama_shapes(*SIZES[size])


def moved_bytes(opt: torch.optim.Optimizer) -> int:
    """The bytes one step must move: each parameter read and written, its gradient read, its state read and
    written, except the kept-entry indices of sparse momentum (``kept_*``), only read."""
    total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            total += p.numel() * (2 * p.element_size() + (p.grad.element_size() if p.grad is not None else 0))
    kept = sum(t.numel() * t.element_size() for st in opt.state.values() if isinstance(st, dict)
               for key, t in st.items() if key.startswith("kept") and torch.is_tensor(t))
    return total + 2 * state_bytes(opt) - kept


class Triad:
    """The machine's memory bandwidth as a kernel sees it: a = b + s·c over arrays far beyond the caches,
    counted as 12 bytes per entry (two reads, one write), at torch's current thread count."""

    def __init__(self, device: torch.device, entries: int = TRIAD_ENTRIES) -> None:
        self.a, self.b, self.c = (torch.rand(entries, device=device) for _ in range(3))
        self.device = device

    def seconds(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        torch.add(self.b, self.c, alpha=1.5, out=self.a)
        _sync(self.device)
        return time.perf_counter() - start

    @property
    def bytes(self) -> int:
        return 3 * self.a.numel() * self.a.element_size()


# A factory gets the parameters and their names (peers that partition a model by name need them).
Factory = Callable[[list[torch.nn.Parameter], list[str]], torch.optim.Optimizer]
# GaLore as its paper's LLaMA runs: rank a quarter of the hidden size (128 at 60M), projection every 200
# steps, scale 0.25, on the attention and MLP matrices; Adam on the rest.
GALORE_RANK_FRACTION = 0.25


def galore_groups(params: list[torch.nn.Parameter], names: list[str], rank: int, update_proj_gap: int = 200,
                  scale: float = 0.25) -> list[dict]:
    """GaLore's param groups: its projection for the blocks' matrices, plain Adam for the rest."""
    blocks = [p for p, n in zip(params, names) if p.dim() == 2 and (".self_attn." in n or ".mlp." in n)]
    ids = {id(p) for p in blocks}
    return [{"params": [p for p in params if id(p) not in ids]},
            {"params": blocks, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
             "proj_type": "std"}]


def optimizers(include_reference: bool, hidden: int, heads: int,
               device_type: str = "cpu") -> dict[str, Factory]:
    """Name -> factory. Peers that are not installed are left out with a note on stderr (and a line in the
    results). On CUDA, where the default flags pick foreach, the ``fused=True`` rows time the Triton steps; on
    CPU ``fused=True`` is the default C++ step, already timed."""
    from spam_opt.spam import SPAM
    from spam_opt.stable_spam import StableSPAM

    # clip_delay=0: the timed steps run with the spike clip on, as every step after the first 20 does.
    table: dict[str, Factory] = {
        BASELINE: lambda ps, _: torch.optim.AdamW(ps, fused=True),
        "torch AdamW foreach": lambda ps, _: torch.optim.AdamW(ps, foreach=True),
        "SPAM (default flags)": lambda ps, _: SPAM(ps, clip_delay=0),
        "SPAM foreach": lambda ps, _: SPAM(ps, clip_delay=0, foreach=True),
        "SPAM density 0.25 (default flags)": lambda ps, _: SPAM(ps, clip_delay=0, density=0.25),
        "SPAM density 0.25 foreach": lambda ps, _: SPAM(ps, clip_delay=0, density=0.25, foreach=True),
        "SPAM 8-bit state (default flags)": lambda ps, _: SPAM(ps, clip_delay=0, state_bits=8),
        "SPAM 8-bit state foreach": lambda ps, _: SPAM(ps, clip_delay=0, state_bits=8, foreach=True),
        "SPAM density 0.25, 8-bit state (default flags)":
            lambda ps, _: SPAM(ps, clip_delay=0, density=0.25, state_bits=8),
    }
    if include_reference:
        table["SPAM reference (foreach=False)"] = lambda ps, _: SPAM(ps, clip_delay=0, foreach=False)
    table["Stable-SPAM (spam_opt, default flags)"] = lambda ps, _: StableSPAM(ps)
    table["Stable-SPAM foreach"] = lambda ps, _: StableSPAM(ps, foreach=True)
    table["Stable-SPAM 8-bit state (default flags)"] = lambda ps, _: StableSPAM(ps, state_bits=8)
    if device_type == "cuda":
        table["SPAM fused=True (Triton)"] = lambda ps, _: SPAM(ps, clip_delay=0, fused=True)
        table["SPAM density 0.25 fused=True (Triton)"] = \
            lambda ps, _: SPAM(ps, clip_delay=0, density=0.25, fused=True)
        table["SPAM 8-bit state fused=True (Triton)"] = \
            lambda ps, _: SPAM(ps, clip_delay=0, state_bits=8, fused=True)
        table["SPAM density 0.25, 8-bit state fused=True (Triton)"] = \
            lambda ps, _: SPAM(ps, clip_delay=0, density=0.25, state_bits=8, fused=True)
        table["Stable-SPAM fused=True (Triton)"] = lambda ps, _: StableSPAM(ps, fused=True)
        table["Stable-SPAM 8-bit state fused=True (Triton)"] = \
            lambda ps, _: StableSPAM(ps, state_bits=8, fused=True)
    peers: list[tuple[str, Callable[[], dict[str, Factory]]]] = [
        ("pytorch-optimizer", _pytorch_optimizer),
        ("bitsandbytes", _bitsandbytes),
        ("torchao", _torchao),
        ("galore-torch", lambda: _galore(hidden)),
        ("adam-mini", lambda: _adam_mini(hidden, heads)),
    ]
    for package, make in peers:
        try:
            table.update(make())
        except ImportError as err:
            print(f"skipping {package}: {err}", file=sys.stderr)
            table[f"{package} (not installed)"] = _not_installed(package, err)
    return table


def _not_installed(package: str, err: ImportError) -> Factory:
    def fail(ps: list[torch.nn.Parameter], names: list[str]) -> torch.optim.Optimizer:
        raise ImportError(f"{package} is not installed ({err})")
    return fail


def _pytorch_optimizer() -> dict[str, Factory]:
    import pytorch_optimizer as po

    return {"pytorch-optimizer SPAM foreach": lambda ps, _: po.SPAM(ps, foreach=True),
            "pytorch-optimizer SPAM": lambda ps, _: po.SPAM(ps),
            "pytorch-optimizer StableSPAM": lambda ps, _: po.StableSPAM(ps)}


def _bitsandbytes() -> dict[str, Factory]:
    import bitsandbytes as bnb

    return {"bitsandbytes AdamW8bit": lambda ps, _: bnb.optim.AdamW8bit(ps)}


def _torchao() -> dict[str, Factory]:
    from torchao.optim import AdamW4bit, AdamW8bit

    return {"torchao AdamW8bit": lambda ps, _: AdamW8bit(ps),
            "torchao AdamW4bit": lambda ps, _: AdamW4bit(ps)}


def _galore(hidden: int) -> dict[str, Factory]:
    from galore_torch import GaLoreAdamW

    rank = round(GALORE_RANK_FRACTION * hidden)
    return {f"GaLore AdamW rank {rank}": lambda ps, names: GaLoreAdamW(galore_groups(ps, names, rank))}


def _adam_mini(hidden: int, heads: int) -> dict[str, Factory]:
    from adam_mini import Adam_mini

    return {"Adam-mini": lambda ps, names: Adam_mini(list(zip(names, ps)), dim=hidden, n_heads=heads,
                                                     verbose=False)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_size(name: str, device: torch.device, rounds: int, include_reference: bool,
               only: re.Pattern[str] | None = None) -> list[dict]:
    hidden, heads = (1024, 16) if name == BLOCKS else (SIZES[name][0], HEADS[name])
    gen = torch.Generator().manual_seed(0)
    names, shapes = zip(*shapes_of(name))
    # One set of parameters and gradients shared by every optimizer: the step's cost does not depend on
    # the values, and sharing keeps the 130M run within a few GB.
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device)) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 1e-3).to(device) for s in shapes]
    numel = sum(p.numel() for p in params)
    print(f"{name}: {numel / 1e6:.0f}M parameters on {device}", file=sys.stderr, flush=True)
    rows = []
    opts = {}
    threads = torch.get_num_threads() if device.type == "cpu" else None
    for label, factory in optimizers(include_reference, hidden, heads, device.type).items():
        if only is not None and label != BASELINE and not only.search(label):
            continue
        for p, g in zip(params, grads):
            p.grad = g.clone()
        try:
            opt = factory(params, list(names))
            _sync(device)
            start = time.perf_counter()
            opt.step()
            _sync(device)
            first = time.perf_counter() - start
            opt.step()  # a second untimed step: lazily created buffers, the second-step code paths
            print(f"{name} {label}: first step {first:.1f} s", file=sys.stderr, flush=True)
        except Exception as err:  # a peer that does not run here (or is not installed): report it, go on
            print(f"{name} {label}: {type(err).__name__}: {err}", file=sys.stderr)
            rows.append(dict(size=name, threads=threads, label=label,
                             error=f"{type(err).__name__}: {str(err)[:80]}"))
            continue
        opts[label] = (opt, first)
    triad = Triad(device)
    triad.seconds()
    triad_times: list[float] = []
    times: dict[str, list[float]] = {label: [] for label in opts}
    hosts: dict[str, list[float]] = {label: [] for label in opts}  # until step() returns, before the sync
    for _ in range(rounds):
        triad_times.append(triad.seconds())
        for label, (opt, _) in opts.items():
            for p, g in zip(params, grads):
                p.grad = g.clone()  # some peers clip into p.grad; every step sees the same gradient
            _sync(device)
            start = time.perf_counter()
            opt.step()
            hosts[label].append(time.perf_counter() - start)
            _sync(device)
            times[label].append(time.perf_counter() - start)
    triad_bw = triad.bytes / statistics.median(triad_times)
    del triad
    for label, (opt, first) in opts.items():
        rows.append(dict(size=name, threads=threads, label=label, numel=numel,
                         median=statistics.median(times[label]), first=first, state=state_bytes(opt),
                         moved=moved_bytes(opt), triad=triad_bw))
        if device.type != "cpu":  # on CPU a step is done when it returns
            rows[-1]["host"] = statistics.median(hosts[label])
        median_ms = rows[-1]["median"] * 1e3
        print(f"{name:>5} {label:<40} {median_ms:9.1f} ms  first {first:6.1f} s", file=sys.stderr)
    return rows


def combine(runs: list[list[dict]]) -> list[dict]:
    """One row per optimizer from several runs of ``bench_size``: the median step time and triad over the
    runs, each run's ratio to the baseline (``ratios``) and their median (``ratio``); the first run's first
    step, state and bytes (they do not vary). An optimizer that failed in any run is reported failed."""
    rows = []
    for label in dict.fromkeys(r["label"] for run in runs for r in run):
        mine = [next(r for r in run if r["label"] == label) for run in runs]
        failed = next((r for r in mine if "error" in r), None)
        if failed is not None:
            rows.append(failed)
            continue
        bases = [next((r.get("median") for r in run if r["label"] == BASELINE), None) for run in runs]
        ratios = [r["median"] / b if b else float("nan") for r, b in zip(mine, bases)]
        rows.append(dict(mine[0], median=statistics.median(r["median"] for r in mine),
                         triad=statistics.median(r["triad"] for r in mine), ratios=ratios,
                         ratio=statistics.median(ratios)))
        if "host" in mine[0]:
            rows[-1]["host"] = statistics.median(r["host"] for r in mine)
    return rows


def _small(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (a GPU's ns per parameter, 0.0061, is not 0.01)."""
    return f"{x:.2f}" if x >= 0.1 or x == 0 or x != x else f"{x:.2g}"


def render(rows: list[dict], command: str, device: torch.device, rounds: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    lines = [
        f"Command: `{command}`",
        "",
        f"Device: {device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, {rounds} interleaved rounds, "
        f"load average after the run {', '.join(f'{x:.2f}' for x in load)}.",
        "Step: median ms of the timed steps. Ratios against torch AdamW fused (step) and AdamW's state "
        "bytes, measured in the same process. ns/param: step time per parameter. Moved: the bytes per "
        "parameter the step must move (g read, p and state read and written, kept-entry indices read). "
        "GB/s: those bytes over the step time; x triad: that bandwidth over the triad's (a = b + s·c, "
        f"{TRIAD_ENTRIES / 2**20:.0f}M entries per array, 12 bytes per entry, same threads, timed in the "
        "same rounds). First step: state creation plus any compile, in seconds.",
        *(["Host ms (on a GPU): the median time until step() returns, before the device finishes; near the "
           "step's time, the step is bound by its launches, not by the device."]
          if any("host" in r for r in rows) else []),
        *(["With several runs (fresh tensors and optimizers each), every number is the median over the runs, "
           "and the last column gives each run's ratio."] if any(len(r.get("ratios", ())) > 1 for r in rows)
          else []),
        "",
    ]
    for size, threads in dict.fromkeys((r["size"], r["threads"]) for r in rows):
        group = [r for r in rows if r["size"] == size and r["threads"] == threads]
        ref = next((r for r in group if r["label"] == BASELINE and "median" in r), None)
        timed = [r for r in group if "numel" in r]
        if not timed:
            continue
        numel, triad = timed[0]["numel"], timed[0]["triad"]
        host = "host" in timed[0]
        runs = len(timed[0]["ratios"])
        several = runs > 1
        extra = " |" if several else ""  # the each-run column
        what = ("block matrices (16 x 1024 x 1024, 12 x 2752 x 1024)" if size == BLOCKS
                else f"LLaMA {size} shapes")
        on = "" if threads is None else f", {threads} thread{'s' if threads > 1 else ''}"
        lines += [f"## {what} ({numel / 1e6:.1f}M parameters{on})", "",
                  f"Triad bandwidth: {triad / 1e9:.1f} GB/s"
                  + (f" (median of {runs} runs)." if several else "."),
                  "",
                  "| optimizer | step ms |" + (" host ms |" if host else "") + " x fused AdamW | ns/param "
                  "| moved B/param | GB/s | x triad | state MB | x AdamW state | first step s |"
                  + (" x fused AdamW, each run |" if several else ""),
                  "|---|---:|" + ("---:|" if host else "") + "---:|---:|---:|---:|---:|---:|---:|---:|"
                  + ("---|" if several else "")]
        for r in group:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error']} |" + " |" * (8 + host) + extra)
                continue
            ratio = r["ratio"] if ref else float("nan")
            state_ratio = r["state"] / ref["state"] if ref else float("nan")
            bandwidth = r["moved"] / r["median"]
            lines.append(f"| {r['label']} | {r['median'] * 1e3:.1f} |"
                         + (f" {r['host'] * 1e3:.1f} |" if host else "") + f" {ratio:.2f} "
                         f"| {_small(r['median'] / numel * 1e9)} | {r['moved'] / numel:.2f} "
                         f"| {bandwidth / 1e9:.1f} | {_small(bandwidth / triad)} "
                         f"| {r['state'] / 2**20:.1f} | {state_ratio:.3f} | {r['first']:.1f} |"
                         + (f" {' / '.join(f'{x:.2f}' for x in r['ratios'])} |" if several else ""))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20m,60m,130m",
                        help=f"comma-separated, from {','.join(SIZES)}, and {BLOCKS} (block matrices alone)")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per optimizer (interleaved)")
    parser.add_argument("--runs", type=int, default=1,
                        help="fresh runs per size (new tensors and optimizers); the table gives their median")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default=None,
                        help="torch CPU threads, comma-separated for several runs (default: torch's)")
    parser.add_argument("--no-reference", action="store_true", help="leave out SPAM's slow reference path")
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help=f"time only the optimizers whose name matches (and {BASELINE!r}, the baseline)")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/"
                                                     "optimizer_step_<device>.md; '-' prints only)")
    add_wait_argument(parser)
    args = parser.parse_args(argv)
    sizes = [s.strip().lower() for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SIZES and s != BLOCKS]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {sorted(SIZES)} or {BLOCKS}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: give thread counts such as 1 or 1,2")
    if any(t is not None and t < 1 for t in thread_counts):
        parser.error("--threads: each count must be at least 1")
    try:
        only = re.compile(args.only) if args.only is not None else None
    except re.error as err:
        parser.error(f"--only {args.only!r} is not a regular expression: {err}")
    device = torch.device(args.device)
    rows = []
    with watch(args.max_wait) as load:
        for threads in thread_counts:
            if threads is not None:
                torch.set_num_threads(threads)
            for size in sizes:
                rows += combine([bench_size(size, device, args.rounds, not args.no_reference, only)
                                 for _ in range(args.runs)])
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    for cache in ("SPAM_OPT_CACHE", "TORCHINDUCTOR_CACHE_DIR"):  # fresh caches: first steps include builds
        if cache in os.environ:
            command = f"{cache}={os.environ[cache]} {command}"
    text = provenance.timing_line(load.summary()) + "\n\n" + render(rows, command, device, args.rounds)
    print(text)
    if args.out != "-":
        out = Path(args.out or Path(__file__).parent / "results" / f"optimizer_step_{device.type}.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
