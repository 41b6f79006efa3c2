"""Quantization error of 8-bit optimizer-state maps on a real training run (exploration draft)."""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

import torch
from torch import Tensor

# --- candidate maps: fake quantization (quantize, then dequantize) of row-aligned blocks -------------


def _blocks(x: Tensor, block: int) -> tuple[Tensor, int, int]:
    """x as (rows * blocks_per_row, block), zero-padded; with the row length and the padded row length."""
    length = x.shape[-1]
    per_row = -(-length // block)
    rows = x.reshape(-1, length)
    padded = torch.nn.functional.pad(rows, (0, per_row * block - length))
    return padded.reshape(-1, block), length, per_row * block


def _unblock(y: Tensor, shape: torch.Size, length: int, padded: int) -> Tensor:
    return y.reshape(-1, padded)[:, :length].reshape(shape)


def _dynamic_map(signed: bool) -> Tensor:
    from torchao.optim.quant_utils import create_dynamic_map

    return torch.tensor(create_dynamic_map(signed=signed), dtype=torch.float32)


_QMAPS: dict[bool, Tensor] = {}


def fq_dynamic(x: Tensor, block: int, signed: bool) -> Tensor:
    from torchao.optim.quant_utils import quantize_8bit_with_qmap

    qmap = _QMAPS.setdefault(signed, _dynamic_map(signed))
    b, length, padded = _blocks(x, block)
    scale = b.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    codes = quantize_8bit_with_qmap(b / scale, qmap)
    return _unblock(qmap[codes.int()] * scale, x.shape, length, padded)


def fq_linear(x: Tensor, block: int, signed: bool) -> Tensor:
    levels = 127.0 if signed else 255.0
    b, length, padded = _blocks(x, block)
    scale = b.abs().amax(-1, keepdim=True).clamp_min(1e-30) / levels
    return _unblock(torch.round(b / scale) * scale, x.shape, length, padded)


def fq_power(x: Tensor, block: int, signed: bool, power: float, floor_one: bool = False) -> Tensor:
    """Linear codes of sign(x)|x|^(1/power): power 2 on v is 'sqrt(v) on a linear map'."""
    levels = 127.0 if signed else 255.0
    b, length, padded = _blocks(x, block)
    amax = b.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    c = torch.round(levels * (b.abs() / amax) ** (1 / power))
    if floor_one:
        c = torch.where(b != 0, c.clamp_min(1), c)
    y = torch.sign(b) * (c / levels) ** power * amax
    return _unblock(y, x.shape, length, padded)


def fq_ratio(m: Tensor, v: Tensor, B: int, eps: float, stochastic: bool = False,
             s_power: float = 1.0) -> tuple[Tensor, Tensor]:
    """r = m / (sqrt(v) + eps) on a signed linear map, sqrt(v) on an unsigned linear map (zero only for 0)."""
    s = v.sqrt()
    sb, length, padded = _blocks(s, B)
    smax = sb.amax(-1, keepdim=True).clamp_min(1e-30)
    x = 255.0 * (sb / smax) ** (1 / s_power)
    c = torch.floor(x + torch.rand_like(x)) if stochastic else torch.round(x)
    c = torch.where(sb > 0, c.clamp_min(1), c)
    s_hat = _unblock((c / 255.0) ** s_power * smax, v.shape, length, padded)
    r = m / (s + eps)
    r_hat = fq_linear(r, B, True)
    return r_hat * (s_hat + eps), s_hat * s_hat


def _pair(fm, fv):
    return lambda m, v, B, eps: (fm(m, B), fv(v, B))


CANDIDATES = {
    "dynamic / dynamic (bnb, torchao)": _pair(lambda x, B: fq_dynamic(x, B, True), lambda x, B: fq_dynamic(x, B, False)),
    "linear / sqrt, zero only for 0": _pair(lambda x, B: fq_linear(x, B, True),
                                            lambda x, B: fq_power(x, B, False, 2, True)),
    "sqrt / sqrt, zero only for 0": _pair(lambda x, B: fq_power(x, B, True, 2),
                                          lambda x, B: fq_power(x, B, False, 2, True)),
    "sqrt / 4th root, zero only for 0": _pair(lambda x, B: fq_power(x, B, True, 2),
                                              lambda x, B: fq_power(x, B, False, 4, True)),
    "m/sqrt(v) linear / sqrt, zero only for 0": lambda m, v, B, eps: fq_ratio(m, v, B, eps),
    "m/sqrt(v) linear / sqrt stochastic": lambda m, v, B, eps: fq_ratio(m, v, B, eps, True),
    "m/sqrt(v) linear / 4th root, zero only for 0": lambda m, v, B, eps: fq_ratio(m, v, B, eps, s_power=2.0),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-20m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--blocks", default="64,128,256,2048")
    parser.add_argument("--only", default=None)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--params", default=r"layers\.(0|3)\.(self_attn\.q|mlp\.(up|down))|embed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared machine: OpenMP's barriers spin when a thread is descheduled
    torch.manual_seed(0)
    from trainers.data import build_splits, load_documents, make_batches, make_tokenizer
    from trainers.models import build_model

    from spam_opt.spam import SPAM

    docs = load_documents("builtin", max_mb=2.0)
    tok = make_tokenizer("byte", docs, 0)
    splits = build_splits(docs, tok, args.seq_len, 0.05)
    batches = make_batches(splits.train, args.batch_size, seed=0)
    model = build_model(args.model, len(tok), args.seq_len)
    hyper = dict(reset_interval=100, warmup_steps=30, clip_delay=4, threshold=5000.0)
    opt = SPAM(model.parameters(), lr=args.lr, **hyper)
    b1, b2, eps = 0.9, 0.999, 1e-6
    pattern = re.compile(args.params)
    params = [p for n, p in model.named_parameters() if p.dim() >= 2 and pattern.search(n)]
    print(f"{sum(p.numel() for p in params)} entries in {len(params)} tensors", file=sys.stderr)
    blocks = [int(b) for b in args.blocks.split(",")]
    names = [n for n in CANDIDATES if args.only is None or any(o in n for o in args.only.split(";"))]
    shadow = {(n, B): [(torch.zeros_like(p), torch.zeros_like(p)) for p in params] for n in names for B in blocks}
    errs = {k: [] for k in shadow}
    norms = {k: [] for k in shadow}
    zeros = {k: [] for k in shadow}
    clips = {k: 0 for k in shadow}
    ref_clips = 0
    started = time.time()
    for step in range(1, args.steps + 1):
        batch = batches[step - 1]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        s = step
        k = s % hyper["reset_interval"]
        reset = k == 0
        clip_on = s >= hyper["clip_delay"] and k >= hyper["clip_delay"]
        grads = [p.grad.detach().clone() for p in params]
        v_before = [opt.state[p]["exp_avg_sq"].clone() if p in opt.state else torch.zeros_like(p) for p in params]
        opt.step()
        opt.zero_grad()
        us = []
        for p, g, vb in zip(params, grads, v_before):
            st = opt.state[p]
            us.append(st["exp_avg"] / (st["exp_avg_sq"].sqrt() + eps))
            if clip_on and not reset:
                ref_clips += int(((vb > 0) & (g * g > hyper["threshold"] * vb)).sum())
        ref_norm = math.sqrt(sum(float((u * u).sum()) for u in us))
        for key, states in shadow.items():
            fq = CANDIDATES[key[0]]
            diff = 0.0
            norm = 0.0
            zero = 0
            total = 0
            for i, (g, u) in enumerate(zip(grads, us)):
                m, v = states[i]
                if reset:
                    m, v = torch.zeros_like(m), torch.zeros_like(v)
                if clip_on and not reset:
                    t = hyper["threshold"] * v
                    spike = (v > 0) & (g * g > t)
                    clips[key] += int(spike.sum())
                    g = torch.where(spike, g.sign() * t.sqrt(), g)
                m_new = b1 * m + (1 - b1) * g
                v_new = b2 * v + (1 - b2) * g * g
                uq = m_new / (v_new.sqrt() + eps)
                diff += float(((uq - u) ** 2).sum())
                norm += float((uq * uq).sum())
                mq, vq = fq(m_new, v_new, key[1], eps)
                zero += int(((v_new > 0) & (vq == 0)).sum())
                total += v_new.numel()
                states[i] = (mq, vq)
            errs[key].append(math.sqrt(diff) / ref_norm)
            norms[key].append(math.sqrt(norm) / ref_norm)
            zeros[key].append(zero / total)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - started:.0f}s", file=sys.stderr, flush=True)
    tail = slice(len(errs[next(iter(errs))]) // 2, None)
    print(f"reference clips {ref_clips}")
    print("| maps (m / v) | block | update rel. err (mean 2nd half) | max | update norm ratio | v>0 -> 0 | clips |")
    for key in shadow:
        e = errs[key][tail]
        print(f"| {key[0]} | {key[1]} | {sum(e) / len(e):.4f} | {max(errs[key]):.4f} | "
              f"{sum(norms[key][tail]) / len(e):.4f} | {max(zeros[key]):.2e} | {clips[key]} |")


if __name__ == "__main__":
    main()
