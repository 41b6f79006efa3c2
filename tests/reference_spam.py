"""An independent float64 transcription of docs/algorithm.md's SPAM rule, written loop-first for clarity.

It keeps full-size moments for every parameter and a boolean mask for sparse ones (entries outside the
mask keep m = v = 0 and get no Adam update), so it shares no code path with the optimizer's kernels.
Only the choice of kept entries comes from ``spam_opt.sparse``: that hash is the specification of which
entries are kept, and it is tested on its own.

``state_bits=8`` adds docs/algorithm.md's 8-bit rule: after each step the moments of a parameter of 2+
dimensions are replaced by their dequantized codes, per block of up to 256 entries of a row, in float64.
"""

from __future__ import annotations

import math

import torch

from spam_opt.sparse import kept_indices, mask_key


class ReferenceSPAM:
    def __init__(self, params, *, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, threshold=5000.0,
                 reset_interval=500, warmup_steps=150, clip_delay=20, density=1.0, seed=0, maximize=False,
                 sparse=None, state_bits=32):
        self.p = [p.detach().double().clone() for p in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.theta, self.T, self.N, self.D = threshold, reset_interval, warmup_steps, clip_delay
        self.density, self.seed, self.maximize = density, seed, maximize
        self.state_bits = state_bits
        # which parameters use sparse momentum (default: every parameter of 2+ dims when density < 1)
        self.sparse = sparse if sparse is not None else [density < 1 and p.dim() >= 2 for p in self.p]
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.n = [0 for _ in self.p]
        self.s = 0
        self.masks = [self._mask(i, 0) for i in range(len(self.p))]
        self.clipped = [0 for _ in self.p]
        self.nonfinite = [False for _ in self.p]  # entries skipped for a NaN/Inf gradient

    def _mask(self, i, reset_number):
        p = self.p[i]
        if not self.sparse[i]:
            return torch.ones_like(p, dtype=torch.bool)
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        mask[kept_indices(p.numel(), mask_key(self.seed, i, reset_number), self.density).long()] = True
        return mask.view_as(p)

    def step(self, grads):
        self.s += 1
        s, T, N, D = self.s, self.T, self.N, self.D
        k = s % T if T > 0 else s
        reset = T > 0 and k == 0
        clip_on = self.theta > 0 and s >= D and (T == 0 or k >= D)
        if T == 0 or s < T or k >= N:
            w = 1.0
        else:
            w = 1 - 0.99 * (1 + math.cos(math.pi * k / (N + 1))) / 2
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.detach().double().clone()
            if self.maximize:
                g = -g
            if reset:
                self.masks[i] = self._mask(i, s // T)
                self.m[i].zero_()
                self.v[i].zero_()
            mask = self.masks[i]
            p, m, v = self.p[i], self.m[i], self.v[i]
            self.n[i] += 1
            n = self.n[i]
            count = 0
            # an entry whose gradient is NaN/Inf keeps p, m and v (entries outside the mask never read g)
            frozen = mask & ~torch.isfinite(g)
            self.nonfinite[i] = bool(frozen.any())
            flat_g, flat_m, flat_v = g.view(-1), m.view(-1), v.view(-1)
            flat_mask, flat_frozen = mask.view(-1), frozen.view(-1)
            for j in range(flat_g.numel()):
                if not flat_mask[j] or flat_frozen[j]:
                    continue
                gj = flat_g[j].item()
                vj = flat_v[j].item()
                if clip_on and vj > 0 and gj * gj > self.theta * vj:
                    gj = math.copysign(math.sqrt(self.theta * vj), gj)
                    count += 1
                flat_m[j] = self.b1 * flat_m[j].item() + (1 - self.b1) * gj
                flat_v[j] = self.b2 * vj + (1 - self.b2) * gj * gj
            self.clipped[i] = count
            step_size = self.lr * w * math.sqrt(1 - self.b2**n) / (1 - self.b1**n)
            update = torch.where(mask, m / (v.sqrt() + self.eps), torch.zeros_like(m))
            before = p.clone()
            p -= step_size * update
            p -= self.lr * self.wd * p
            p.copy_(torch.where(frozen, before, p))
            if self.state_bits == 8 and p.dim() >= 2:
                self._round_trip_8bit(i)

    def _round_trip_8bit(self, i):
        """Replace m and v by what 8 bits store of them: r = m / (s + eps) linearly and s = sqrt(v) on a
        square-root scale, per block."""
        m, v, mask = self.m[i], self.v[i], self.masks[i]
        length = m.shape[-1]
        rows_m, rows_v, rows_mask = m.view(-1, length), v.view(-1, length), mask.view(-1, length)
        for row in range(rows_m.shape[0]):
            for start in range(0, length, 256):
                cols = torch.arange(start, min(start + 256, length))
                cols = cols[rows_mask[row, cols]]
                if cols.numel() == 0:
                    continue
                s = rows_v[row, cols].sqrt()
                r = rows_m[row, cols] / (s + self.eps)
                s_scale, r_scale = s.max().item(), r.abs().max().item()
                code_s = torch.round(255 * (s / s_scale).sqrt()) if s_scale > 0 else torch.zeros_like(s)
                code_s = torch.where(s > 0, code_s.clamp(min=1), code_s)
                code_r = torch.round(r * 127 / r_scale) if r_scale > 0 else torch.zeros_like(r)
                s_hat = code_s**2 * (s_scale / 255**2)
                rows_v[row, cols] = s_hat * s_hat
                rows_m[row, cols] = code_r * (r_scale / 127) * (s_hat + self.eps)
