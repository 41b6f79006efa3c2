"""How many ops a forward and backward pass of SpikeGPT issues, on each path, beside LLaMA of the same size.

On a GPU a small model is launch-bound: what it costs is the number of kernels it launches, not their
work. This counts, for one training step's forward and backward pass (no optimizer) at two sequence
lengths, the aten ops that reach the dispatcher (a ``TorchDispatchMode``; views among them, which launch
nothing, are counted apart) and the Triton kernels SpikeGPT launches itself. It runs on CPU: the counts
do not depend on the device (on CPU the Triton path runs in Triton's interpreter, which this sets up).

    python benchmarks/spikegpt_launches.py                       # spikegpt-small vs llama-20m, 64 and 256
    python benchmarks/spikegpt_launches.py --pair spikegpt-60m:llama-60m --seq-lens 128,512

Writes ``results/spikegpt_launches.md``. The Triton path's total must not grow with the sequence and must
stay within ``LIMIT`` times LLaMA's (tests/test_spikegpt_triton.py checks both on a small pair).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

if __name__ == "__main__":  # before triton is imported: the Triton path runs in the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import provenance  # noqa: E402
from op_counter import OpCounter  # noqa: E402

from trainers.models import build_model  # noqa: E402
from trainers.models.spikegpt_kernels import backend, triton_kernels  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT = 2.0  # SpikeGPT's launches on the Triton path / LLaMA's, at most (issue 25)


def count(model: torch.nn.Module, ids: torch.Tensor, path: str | None) -> dict[str, int]:
    """Ops of one forward and backward pass of ``model`` on ``ids``: aten ops, views among them, Triton
    launches, and ``launches`` (the aten ops that are not views, plus the Triton launches)."""
    launches = triton_kernels().launches if path == "triton" else None
    before = sum(launches.values()) if launches is not None else 0
    with backend(path) if path else contextlib.nullcontext(), OpCounter() as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    triton = sum(launches.values()) - before if launches is not None else 0
    return dict(aten=counter.ops, views=counter.views, triton=triton,
                launches=counter.ops - counter.views + triton)


def rows(pair: str, seq_lens: list[int], batch: int, vocab: int) -> list[tuple[str, int, dict[str, int]]]:
    """(label, tokens, counts) for SpikeGPT on each path and for LLaMA, at each sequence length."""
    spikegpt, llama = pair.split(":")
    out = []
    for seq_len in seq_lens:
        ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        model = build_model(spikegpt, vocab, seq_len)
        for path in ("reference", "cpp", "triton"):
            out.append((f"{spikegpt} ({path})", seq_len, count(model, ids, path)))
        out.append((llama, seq_len, count(build_model(llama, vocab, seq_len), ids, None)))
    return out


def table(pair: str, counted: list[tuple[str, int, dict[str, int]]]) -> list[str]:
    spikegpt, llama = pair.split(":")
    lines = [f"## {spikegpt} vs {llama}", "",
             "| model (path) | tokens | aten ops | of them views | Triton launches | launches (non-view ops "
             "+ Triton) | / LLaMA's |", "|---|---:|---:|---:|---:|---:|---:|"]
    llama_launches = {tokens: c["launches"] for label, tokens, c in counted if label == llama}
    for label, tokens, c in counted:
        lines.append(f"| {label} | {tokens} | {c['aten']} | {c['views']} | {c['triton']} | {c['launches']} | "
                     f"{c['launches'] / llama_launches[tokens]:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="spikegpt-small:llama-20m", metavar="SPIKEGPT:LLAMA")
    parser.add_argument("--seq-lens", default="64,256", help="comma-separated sequence lengths")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=257)
    parser.add_argument("--output", default=str(RESULTS / "spikegpt_launches.md"), help="'-' prints only")
    args = parser.parse_args(argv)
    if args.pair.count(":") != 1:
        parser.error(f"--pair takes SPIKEGPT:LLAMA, two presets joined by a colon; got {args.pair}")
    if not triton_kernels().interpreting() and not torch.cuda.is_available():
        parser.error("the Triton path needs TRITON_INTERPRET=1 set before triton is imported")
    seq_lens = [int(n) for n in args.seq_lens.split(",")]
    counted = rows(args.pair, seq_lens, args.batch_size, args.vocab_size)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = ["```", f"$ {command}", "```", "",
             f"# Ops per forward and backward pass (batch {args.batch_size}, torch {torch.__version__})", "",
             "Counted with a TorchDispatchMode on CPU; the counts do not depend on the device. On a GPU each "
             "non-view aten op launches about one kernel (a few launch none or two), each Triton launch one.",
             "", *table(args.pair, counted)]
    provenance.publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
