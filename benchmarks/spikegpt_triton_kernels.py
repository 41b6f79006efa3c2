"""SpikeGPT's Triton kernels at the model's shapes: their errors against float64, and their time against the
pure-PyTorch reference paths they replace, forward and backward.

For each preset (by default ``spikegpt-60m`` and ``spikegpt-216m``: 512 and 768 channels, 1024 tokens)
the WKV (fla-core's kernel behind ``spikegpt_triton.wkv_triton``) and the LIF neuron (ours) run on random
inputs of the block's shape. Errors: the Triton kernels' outputs and gradients against the reference
paths run in float64 (the recurrent WKV, the neuron's loop), beside the float32 reference paths' own;
for the neuron, the spikes that differ. Times: median of ``--rounds`` forward-and-backward calls.

    python benchmarks/spikegpt_triton_kernels.py --device cuda                 # writes results/..._cuda.md
    TRITON_INTERPRET=1 python benchmarks/spikegpt_triton_kernels.py --device cpu --batch-size 1 \\
        --tokens 16 --output -                                                   # a check of the script
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import provenance  # noqa: E402

from trainers.models.spikegpt import SPIKEGPT_PRESETS, WKVState, wkv_parallel, wkv_recurrent  # noqa: E402
from trainers.models.spikegpt_kernels import backend, triton_kernels  # noqa: E402
from trainers.models.spiking_neuron import MultiStepLIF  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ["spikegpt-60m", "spikegpt-216m"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], None], rounds: int, device: torch.device) -> float:
    fn()  # warm-up: Triton compiles at the first call
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _max_error(ours: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """The largest error relative to each tensor's largest magnitude."""
    return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
               for a, b in zip(ours, exact))


def _wkv_inputs(batch: int, tokens: int, channels: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w = -torch.exp(torch.empty(channels).uniform_(-5, 3, generator=gen))  # RWKV's range of decays
    u = torch.randn(channels, generator=gen)
    k, v = (torch.randn(batch, tokens, channels, generator=gen) * s for s in (3.0, 1.0))
    return [x.to(device) for x in (w, u, k, v)]


def _wkv_run(path: str, inputs: list[torch.Tensor], upstream: torch.Tensor,
             dtype: torch.dtype) -> list[torch.Tensor]:
    """The output and the gradients of (output * upstream).sum() in w, u, k, v."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
    state = WKVState(*(s.to(dtype) for s in WKVState.empty(upstream.shape[0], upstream.shape[2],
                                                            upstream.device)))
    if path == "triton":
        out = triton_kernels().wkv_triton(*leaves, *state)[0]
    else:
        out = {"recurrent": wkv_recurrent, "parallel": wkv_parallel}[path](*leaves, state)[0]
    grads = torch.autograd.grad((out * upstream.to(dtype)).sum(), leaves)
    return [out.detach(), *grads]


def _lif_run(path: str, x: torch.Tensor, upstream: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Spikes, last potentials and the gradient of (spikes * upstream).sum() in the input."""
    x = x.detach().to(dtype).requires_grad_()
    with backend(path):
        spikes, v = MultiStepLIF(tau=2.0, v_threshold=1.0, alpha=2.0)(x)
    (grad,) = torch.autograd.grad((spikes * upstream.to(dtype)).sum(), (x,))
    return [spikes.detach(), v, grad]


def measure(preset: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    channels = SPIKEGPT_PRESETS[preset]["n_embd"]
    tokens = args.tokens or SPIKEGPT_PRESETS[preset]["ctx_len"]
    shape = (args.batch_size, tokens, channels)
    gen = torch.Generator().manual_seed(1)
    upstream = torch.randn(shape, generator=gen).to(device)
    rows = []

    inputs = _wkv_inputs(*shape, device)
    exact = _wkv_run("recurrent", inputs, upstream, torch.float64)
    for label, path in (("Triton (fla-core)", "triton"), ("reference (parallel form)", "parallel")):
        error = _max_error(_wkv_run(path, inputs, upstream, torch.float32), exact)
        ms = _median_ms(lambda path=path: _wkv_run(path, inputs, upstream, torch.float32), args.rounds,
                        device)
        rows.append(f"| {preset} | WKV | {label} | {error:.1e} | - | {ms:.2f} |")

    x = (torch.randn(shape, generator=gen) * 1.5 + 0.8).to(device)
    exact = _lif_run("reference", x, upstream, torch.float64)
    for label, path in (("Triton (ours)", "triton"), ("reference (loop)", "reference")):
        ours = _lif_run(path, x, upstream, torch.float32)
        flipped = int((ours[0].double() != exact[0]).sum())
        error = _max_error(ours[1:], exact[1:])
        ms = _median_ms(lambda path=path: _lif_run(path, x, upstream, torch.float32), args.rounds, device)
        rows.append(f"| {preset} | LIF | {label} | {error:.1e} | {flipped} of {x.numel()} | {ms:.2f} |")
    for row in rows:
        print(row, file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=list(SPIKEGPT_PRESETS), default=None,
                        help=f"model shapes (repeatable; default {' and '.join(PRESETS)})")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=None, help="default: the preset's ctx_len")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", default=None, help="markdown file (default: results/spikegpt_triton_"
                        "kernels_<device>.md; '-' prints only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not triton_kernels().interpreting():
        parser.error("on CPU the Triton kernels need TRITON_INTERPRET=1, set before triton is imported")
    if min(args.batch_size, args.rounds, args.tokens or 1) < 1:
        parser.error("--batch-size, --tokens and --rounds must be at least 1")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton's interpreter"
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = ["```", f"$ {command}", "```", "",
             f"# SpikeGPT's Triton kernels against the reference paths ({where}, torch {torch.__version__})",
             "", f"Batch {args.batch_size}, float32; errors against the reference paths in float64, relative "
             "to each tensor's largest magnitude (outputs and gradients in w, u, k, v for the WKV; last "
             "potentials and the input's gradient for the LIF); time: median forward and backward of "
             f"{args.rounds} calls.", "",
             "| shape | kernel | path | max error vs float64 | spikes that differ | ms fwd+bwd |",
             "|---|---|---|---:|---:|---:|"]
    for preset in args.preset or PRESETS:
        lines += measure(preset, args, device)
    provenance.publish("\n".join([*lines, ""]),
                       args.output or RESULTS / f"spikegpt_triton_kernels_{device.type}.md")


if __name__ == "__main__":
    main()
