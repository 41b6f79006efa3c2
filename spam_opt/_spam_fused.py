"""The ``fused`` SPAM kernel: one ``torch.compile``d graph per parameter instead of a dozen eager ops.

For a dense parameter the graph makes two passes: one over g and v that counts the clipped entries and
detects NaN/Inf in the same reduction, and the update pass that reads p, g, m, v once and writes p, m, v.
The skip decision (non-finite gradient, closed gate) stays on device. Shapes are dynamic, so one graph
serves every dense parameter of a dtype (all are viewed as rows of their last dimension), and the
sparse-momentum state can change size at every reset without recompiling. Everything that changes from
step to step (learning rate times warmup, bias correction, decay, clip threshold, gate) is passed as a
0-dim tensor, so nothing recompiles as training goes on.

The same code runs on CUDA through Triton, but it has only been tested on CPU.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from spam_opt._spam_functional import KernelResult, StepScalars, spam_reference
from spam_opt.sparse import KeptEntries

# Row sums of 0/1 values in float32 are exact up to 2**24 entries per row; longer rows count in int64.
_EXACT_ROW = 1 << 24
# Room for every (layout, dtype) mix a model has; past dynamo's default of 8 graphs a function silently
# runs eager (correct, but slow), which a model mixing dtypes, strided and sparse parameters can reach.
_RECOMPILE_LIMIT = 64


def _dense_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: Tensor, step_size: Tensor, gate: Tensor,
                decay: Tensor, clip: Tensor, sign: Tensor, beta1: float, beta2: float, eps: float,
                exact_rows: bool) -> tuple[Tensor, Tensor]:
    g = g.float() * sign
    # clip is +inf when clipping is off at this step: the bound is then inf (or NaN where v == 0) and no
    # entry compares above it.
    bound = (clip * v).sqrt()
    seen = v > 0
    spike = (g.abs() > bound) & seen
    # One reduction gives both the clip count and the NaN/Inf check: a non-finite entry turns its row sum
    # into NaN. Row sums of 0/1 values in float32 are exact (rows <= 2**24 entries).
    rows = torch.where(torch.isfinite(g), spike.float(), torch.nan).sum(-1)
    finite = torch.isfinite(rows).all()
    ok = finite & gate
    g = torch.where(seen, torch.clamp(g, -bound, bound), g)  # cheaper per entry than sign(g) * bound
    m_new = m * beta1 + g * (1 - beta1)
    v_new = v * beta2 + g * g * (1 - beta2)
    p32 = p.float()
    p_new = (p32 - step_size * (m_new / (v_new.sqrt() + eps))) * decay
    m.copy_(torch.where(ok, m_new, m))
    v.copy_(torch.where(ok, v_new, v))
    p.copy_(torch.where(ok, p_new, p32))
    n.copy_(n + ok)
    count = torch.nan_to_num(rows).long().sum() if exact_rows else spike.sum()
    return torch.where(ok, count, 0), ~finite


def _sparse_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: Tensor, kept: Tensor, step_size: Tensor,
                 gate: Tensor, decay: Tensor, clip: Tensor, sign: Tensor, beta1: float, beta2: float,
                 eps: float) -> tuple[Tensor, Tensor]:
    g = g.float().reshape(-1) * sign
    finite = torch.isfinite(g).all()
    ok = finite & gate
    g = g.index_select(0, kept)
    bound = (clip * v).sqrt()
    seen = v > 0
    spike = (g.abs() > bound) & seen
    g = torch.where(seen, torch.clamp(g, -bound, bound), g)  # cheaper per entry than sign(g) * bound
    m_new = m * beta1 + g * (1 - beta1)
    v_new = v * beta2 + g * g * (1 - beta2)
    flat = p.view(-1)
    p32 = flat.float()
    # Adam moves the kept entries only; the decoupled decay then shrinks every entry.
    p_new = p32.index_add(0, kept, -(step_size * (m_new / (v_new.sqrt() + eps)))) * decay
    m.copy_(torch.where(ok, m_new, m))
    v.copy_(torch.where(ok, v_new, v))
    flat.copy_(torch.where(ok, p_new, p32))
    n.copy_(n + ok)
    return torch.where(ok, spike.sum(), 0), ~finite


@functools.cache
def _compiled() -> tuple:
    return (torch.compile(_dense_step, dynamic=True, fullgraph=True),
            torch.compile(_sparse_step, dynamic=True, fullgraph=True))


@functools.cache
def fused_unavailable_reason(device: torch.device) -> str | None:
    """Why the compiled kernel cannot run on ``device``, or None when it can (CPU has the C++ kernel)."""
    if device.type != "cuda":
        return f"the compiled SPAM step runs on CUDA tensors, got {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch.compile on CUDA needs triton (pip install triton)"
    return None


def _as_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Contiguous tensors as 2-D views (rows of the last dimension), so that one graph serves every rank."""
    if not all(t.is_contiguous() for t in tensors):
        return tensors
    shape = (-1, tensors[0].shape[-1])
    return tuple(t.view(shape) for t in tensors)


def _handles(p: Tensor, kept: KeptEntries | None) -> bool:
    # A sparse entry is addressed by its flat index in the full tensor, which needs a flat view of p.
    # A 0-dim parameter would cost a graph of its own (sizes 0 and 1 are specialised) for one entry.
    return p.dim() > 0 and (kept is None or p.is_contiguous())


def spam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    counts: list[Tensor],
    kept: list[KeptEntries | None],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """One compiled graph per parameter; no host synchronisation (see the module docstring)."""
    device = params[0].device
    # maximize is a sign, not a branch: one graph serves both.
    lr_w, decay, clip, sign = torch.tensor(
        [h.lr * h.warmup_scale, 1 - h.lr * h.weight_decay,
         math.inf if h.clip_threshold is None else h.clip_threshold, -1.0 if h.maximize else 1.0],
        dtype=torch.float32, device=device,
    ).unbind()
    gate = torch.ones((), dtype=torch.bool, device=device) if gate is None else gate.to(device)
    # Bias corrections of every parameter in a few small vector ops. The count the update uses is n + 1;
    # when a parameter ends up skipped its step size is simply unused.
    n1 = torch.stack(counts) + 1
    step_sizes = (lr_w * (1 - torch.pow(h.beta2, n1)).sqrt() / (1 - torch.pow(h.beta1, n1))).unbind()

    dense, sparse = _compiled()
    clipped: list[Tensor] = []
    nonfinite: list[Tensor] = []
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        for i, (p, g, m, v, n, entries) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, counts, kept)):
            if not _handles(p, entries):
                result = spam_reference([p], [g], [m], [v], [n], [entries], gate, h)
                c, f = result.clipped[0], result.nonfinite[0]
            elif entries is None:
                p, g, m, v = _as_rows(p, g, m, v)
                c, f = dense(p, g, m, v, n, step_sizes[i], gate, decay, clip, sign, h.beta1, h.beta2, h.eps,
                             p.shape[-1] <= _EXACT_ROW)
            else:
                c, f = sparse(p, g, m, v, n, entries.indices(), step_sizes[i], gate, decay, clip, sign,
                              h.beta1, h.beta2, h.eps)
            clipped.append(c)
            nonfinite.append(f)
    return KernelResult(clipped, nonfinite)
