"""How much error 8-bit optimizer-state maps add to SPAM's updates, measured along a real training run.

    python benchmarks/state_quantization.py                  # LLaMA-20M shapes on bytes, 300 steps
    python benchmarks/state_quantization.py --steps 20 --out -   # a quick look

A model trains with float32-state SPAM. Beside it, each candidate keeps its own 8-bit moments (quantized
per block along rows, as ``spam_opt.state.quantized`` lays them out) and steps them on the same gradients,
with SPAM's rule (clip against its own dequantized v, resets): so the error each map accumulates over the run
is measured, not one rounding. Per step, the update direction m / (sqrt(v) + eps) of each candidate is
compared with the float32 one over the measured tensors: relative L2 error, and the ratio of the update
norms (a map that loses small second moments inflates the updates). Also: the fraction of entries whose
nonzero v is stored as 0 (the next update is then m / eps), and the clip count against float32's.

The peers' map is the dynamic (tree) map of bitsandbytes' and torchao's 8-bit Adam, through torchao's own
functions. ``spam_opt`` is the library's ``QuantizedMoments`` itself; its transcription here
("m/sqrt(v) linear / 4th root") must give the same numbers.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

# (m, v, block, eps) -> (m̂, v̂): what 8 bits give back of the moments.
RoundTrip = Callable[[Tensor, Tensor, int, float], tuple[Tensor, Tensor]]


def _blocks(x: Tensor, block: int) -> tuple[Tensor, int, int]:
    """x as rows of ``block`` entries along its last dimension (each row zero-padded to whole blocks)."""
    length = x.shape[-1]
    per_row = -(-length // block)
    padded = torch.nn.functional.pad(x.reshape(-1, length), (0, per_row * block - length))
    return padded.reshape(-1, block), length, per_row * block


def _unblock(y: Tensor, like: Tensor, length: int, padded: int) -> Tensor:
    return y.reshape(-1, padded)[:, :length].reshape(like.shape)


def _scale(b: Tensor) -> Tensor:
    return b.abs().amax(-1, keepdim=True)


def _codes(x: Tensor, scale: Tensor, levels: float, power: float) -> Tensor:
    """round(levels · (|x| / scale)^(1/power)) with x's sign; 0 where the block is all zero."""
    ratio = torch.where(scale > 0, x.abs() / scale.clamp_min(1e-38), 0.0)
    return torch.sign(x) * torch.round(levels * ratio ** (1 / power))


def _power(x: Tensor, block: int, signed: bool, power: float) -> Tensor:
    """A code linear in |x|^(1/power) (power 1: a linear map). Unsigned maps store only 0 as code 0."""
    b, length, padded = _blocks(x, block)
    levels = 127.0 if signed else 255.0
    scale = _scale(b)
    c = _codes(b, scale, levels, power)
    if not signed:
        c = torch.where(b != 0, c.clamp(min=1), c)
    return _unblock(torch.sign(c) * (c.abs() / levels) ** power * scale, x, length, padded)


def _dynamic(x: Tensor, block: int, signed: bool) -> Tensor:
    from torchao.optim.quant_utils import create_dynamic_map, quantize_8bit_with_qmap

    qmap = torch.tensor(create_dynamic_map(signed=signed), dtype=torch.float32)
    b, length, padded = _blocks(x, block)
    scale = _scale(b).clamp_min(1e-12)  # as torchao's scale_tensor
    codes = quantize_8bit_with_qmap(b / scale, qmap)
    return _unblock(qmap[codes.int()] * scale, x, length, padded)


def _ratio(m: Tensor, v: Tensor, block: int, eps: float, s_power: float) -> tuple[Tensor, Tensor]:
    """r = m / (s + eps) on a linear map, s = sqrt(v) on a map linear in s^(1/s_power)."""
    s = v.sqrt()
    s_hat = _power(s, block, False, s_power)
    return _power(m / (s + eps), block, True, 1.0) * (s_hat + eps), s_hat * s_hat


def _library(m: Tensor, v: Tensor, block: int, eps: float) -> tuple[Tensor, Tensor]:
    from spam_opt.state.quantized import BLOCK, QuantizedMoments, block_ids

    assert block == BLOCK, f"the library's block is {BLOCK}"
    row = m.shape[-1]
    q = QuantizedMoments.zeros(m.numel(), row, None)
    blocks = block_ids(torch.arange(m.numel()), row)
    q.quantize_(m.reshape(-1), v.reshape(-1), blocks, eps)
    m_hat, v_hat = q.dequantize(blocks, eps)
    return m_hat.view_as(m), v_hat.view_as(v)


def _separate(m_map: Callable[[Tensor, int], Tensor], v_map: Callable[[Tensor, int], Tensor]) -> RoundTrip:
    return lambda m, v, block, eps: (m_map(m, block), v_map(v, block))


MAPS: dict[str, RoundTrip] = {
    "dynamic / dynamic (bitsandbytes and torchao)": _separate(lambda x, b: _dynamic(x, b, True),
                                                           lambda x, b: _dynamic(x, b, False)),
    "linear / linear": _separate(lambda x, b: _power(x, b, True, 1), lambda x, b: _power(x, b, False, 1)),
    "linear / sqrt": _separate(lambda x, b: _power(x, b, True, 1), lambda x, b: _power(x, b, False, 2)),
    "sqrt / sqrt": _separate(lambda x, b: _power(x, b, True, 2), lambda x, b: _power(x, b, False, 2)),
    "sqrt / 4th root": _separate(lambda x, b: _power(x, b, True, 2), lambda x, b: _power(x, b, False, 4)),
    "m/sqrt(v) linear / sqrt": lambda m, v, b, eps: _ratio(m, v, b, eps, 1.0),
    "m/sqrt(v) linear / 4th root": lambda m, v, b, eps: _ratio(m, v, b, eps, 2.0),
    "spam_opt (QuantizedMoments)": _library,
}
CHOSEN = "m/sqrt(v) linear / 4th root"


class Shadow:
    """One candidate's 8-bit moments of the measured tensors, stepped with SPAM's rule."""

    def __init__(self, params: list[Tensor], round_trip: RoundTrip, block: int) -> None:
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.round_trip, self.block = round_trip, block
        self.errors: list[float] = []
        self.norms: list[float] = []
        self.zeroed: list[float] = []
        self.clipped = 0

    def step(self, grads: list[Tensor], updates: list[Tensor], reset: bool, clip: float | None,
             betas: tuple[float, float], eps: float) -> None:
        diff = norm = reference = 0.0
        zeroed = total = 0
        for i, (g, u) in enumerate(zip(grads, updates)):
            m, v = (torch.zeros_like(g), torch.zeros_like(g)) if reset else (self.m[i], self.v[i])
            if clip is not None:
                bound = clip * v
                spike = (v > 0) & (g * g > bound)
                self.clipped += int(spike.sum())
                g = torch.where(spike, g.sign() * bound.sqrt(), g)
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            mine = m / (v.sqrt() + eps)
            diff += float(((mine - u) ** 2).sum())
            norm += float((mine * mine).sum())
            reference += float((u * u).sum())
            self.m[i], self.v[i] = self.round_trip(m, v, self.block, eps)
            zeroed += int(((v > 0) & (self.v[i] == 0)).sum())
            total += v.numel()
        self.errors.append(math.sqrt(diff / reference))
        self.norms.append(math.sqrt(norm / reference))
        self.zeroed.append(zeroed / total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-20m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--params", default=r"layers\.(0|3)\.(self_attn\.q|mlp\.(up|down))|embed",
                        help="regex of the parameter names measured (2-D ones)")
    parser.add_argument("--maps", default=",".join(MAPS), help="comma-separated names of MAPS")
    parser.add_argument("--blocks", default="256", help="block sizes for every map")
    parser.add_argument("--chosen-blocks", default="64,128,1024", help=f"more block sizes for {CHOSEN!r}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "state_quantization.md"),
                        help="results file ('-' prints only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # on a shared machine OpenMP's barriers spin while a thread is descheduled
    torch.manual_seed(0)
    from spam_opt.spam import SPAM
    from trainers.data import build_splits, load_documents, make_batches, make_tokenizer
    from trainers.models import build_model

    docs = load_documents("builtin", max_mb=2.0)
    tokenizer = make_tokenizer("byte", docs, 0)
    batches = make_batches(build_splits(docs, tokenizer, args.seq_len, 0.05).train, args.batch_size, seed=0)
    model = build_model(args.model, len(tokenizer), args.seq_len)
    schedule = dict(reset_interval=100, warmup_steps=30, clip_delay=20, threshold=5000.0)
    opt = SPAM(model.parameters(), lr=args.lr, **schedule)
    betas, eps = (0.9, 0.999), 1e-6
    pattern = re.compile(args.params)
    names = [n for n, p in model.named_parameters() if p.dim() >= 2 and pattern.search(n)]
    params = [dict(model.named_parameters())[n] for n in names]
    runs = [(name, int(b)) for name in args.maps.split(",") for b in args.blocks.split(",")]
    runs += [(CHOSEN, int(b)) for b in args.chosen_blocks.split(",") if b and CHOSEN in args.maps.split(",")]
    shadows = {run: Shadow(params, MAPS[run[0]], run[1]) for run in runs}
    reference_clips = 0
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = batches[step - 1]
        model(input_ids=batch, labels=batch).loss.backward()
        k = step % schedule["reset_interval"]
        clip_on = step >= schedule["clip_delay"] and k >= schedule["clip_delay"]
        grads = [p.grad.detach().clone() for p in params]
        if clip_on:
            for p, g in zip(params, grads):
                v = opt.state[p]["exp_avg_sq"]
                reference_clips += int(((v > 0) & (g * g > schedule["threshold"] * v)).sum())
        opt.step()
        opt.zero_grad()
        updates = [opt.state[p]["exp_avg"] / (opt.state[p]["exp_avg_sq"].sqrt() + eps) for p in params]
        for shadow in shadows.values():
            shadow.step(grads, updates, k == 0, schedule["threshold"] if clip_on else None, betas, eps)
        if step % 50 == 0:
            print(f"step {step}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    text = _render(args, names, sum(p.numel() for p in params), shadows, reference_clips, argv)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)


def _render(args: argparse.Namespace, names: list[str], numel: int, shadows: dict[tuple[str, int], Shadow],
            reference_clips: int, argv: list[str] | None) -> str:
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    late = slice(args.steps // 2, None)
    lines = [f"Command: `{command}`", "",
             f"{args.model} on the built-in corpus (bytes), batch {args.batch_size} x {args.seq_len}, lr "
             f"{args.lr:g}, {args.steps} steps of float32-state SPAM (momentum reset every 100 steps, clip "
             f"from step 20 of each interval). Measured: {', '.join(names)} ({numel / 1e6:.2f}M entries).",
             "Update error: ‖u8 − u32‖ / ‖u32‖ of the update direction u = m / (sqrt(v) + eps), mean over "
             "the second half of the run, and its largest. Norm ratio: ‖u8‖ / ‖u32‖ (second half). v → 0: "
             f"largest fraction of nonzero v stored as 0. Clips: entries clipped (float32 state: "
             f"{reference_clips}).", "",
             "| maps (m / v) | block | update error | largest | norm ratio | v → 0 | clips |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (name, block), s in shadows.items():
        errors = s.errors[late]
        lines.append(f"| {name} | {block} | {sum(errors) / len(errors):.4f} | {max(s.errors):.4f} | "
                     f"{sum(s.norms[late]) / len(errors):.4f} | {max(s.zeroed):.1e} | {s.clipped} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
