"""RWKV-4's WKV by its definition, in float64: the oracle for every WKV path (reference and C++)."""

from __future__ import annotations

import torch


def naive_wkv(w, u, k, v):
    """out_t = sum_i weight_ti v_i / sum_i weight_ti over i <= t, weight exp((t - 1 - i) w + k_i) for i < t
    and exp(u + k_t) for i = t; in float64, from an empty state."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    out = torch.empty_like(v)
    for t in range(k.shape[1]):
        lags = torch.arange(t - 1, -1, -1, dtype=torch.float64)[:, None]  # t - 1 - i for i < t
        logw = torch.cat([lags * w + k[:, :t], (u + k[:, t])[:, None]], dim=1)  # (B, t + 1, C)
        weight = torch.exp(logw - logw.amax(dim=1, keepdim=True))  # a common factor cancels in the ratio
        out[:, t] = (weight * v[:, : t + 1]).sum(1) / weight.sum(1)
    return out


def wkv_inputs(seed, batch=2, tokens=37, channels=5, k_scale=3.0, k_offset=0.0, dtype=torch.float32):
    """w (RWKV's range of decays), u, k, v, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(channels, dtype=torch.float64).uniform_(-5, 3, generator=gen))
    u = torch.randn(channels, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, tokens, channels, generator=gen, dtype=torch.float64) * k_scale + k_offset
    v = torch.randn(batch, tokens, channels, generator=gen, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (w, u, k, v))
