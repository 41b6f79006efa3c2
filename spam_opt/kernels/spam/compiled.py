"""The compiled SPAM kernel: one ``torch.compile``d graph per parameter instead of a dozen eager ops.

For a dense parameter the graph reads p, g, m, v and writes p, m, v, with the clip count and the
NaN/Inf report as reductions of the same pass. Nothing is read on the host. Shapes are dynamic, so one
graph serves every dense parameter of a dtype (all are viewed as rows of their last dimension), and the
sparse-momentum state can change size at every reset without recompiling. Everything that changes from
step to step (learning rate times warmup, bias correction, decay, clip threshold, gate) is passed as a
0-dim tensor, so nothing recompiles as training goes on.

It is CUDA's ``fused=True`` path (through Triton); until it has run on a GPU the default on CUDA is the
foreach kernel. The tests run it on CPU against the reference.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.quantized import on_float32_moments
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.inputs import StepScalars, TensorState
from spam_opt.kernels.spam.reference import keep_unmoved, spam_reference
from spam_opt.state.kept import KeptEntries

# Room for every (layout, dtype) mix a model has; past dynamo's default of 8 graphs a function silently
# runs eager (correct, but slow), which a model mixing dtypes, strided and sparse parameters can reach.
_RECOMPILE_LIMIT = 64


def _clip(g: Tensor, v: Tensor, clip: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The clipped gradient, the spike mask, and which entries are finite (the ones that move)."""
    finite = torch.isfinite(g)
    # clip is +inf when clipping is off at this step: the threshold is then inf (or NaN where v == 0) and
    # no entry compares above it.
    threshold = clip * v
    spike = finite & (v > 0) & (g * g > threshold)
    return torch.where(spike, g.sign() * threshold.sqrt(), g), spike, finite


def _dense_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: Tensor, step_size: Tensor, gate: Tensor,
                decay: Tensor, clip: Tensor, sign: Tensor, beta1: float, beta2: float,
                eps: float) -> tuple[Tensor, Tensor]:
    g, spike, finite = _clip(g.float() * sign, v, clip)
    m_new = m * beta1 + g * (1 - beta1)
    v_new = v * beta2 + g * g * (1 - beta2)
    p32 = p.float()
    p_new = (p32 - step_size * (m_new / (v_new.sqrt() + eps))) * decay
    moves = finite & gate
    m.copy_(torch.where(moves, m_new, m))
    v.copy_(torch.where(moves, v_new, v))
    p.copy_(torch.where(moves, p_new, p32))
    n.copy_(n + gate)
    return torch.where(gate, spike.sum(), 0), gate & ~finite.all()


def _sparse_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: Tensor, kept: Tensor, step_size: Tensor,
                 gate: Tensor, decay: Tensor, clip: Tensor, sign: Tensor, beta1: float, beta2: float,
                 eps: float) -> tuple[Tensor, Tensor]:
    g, spike, finite = _clip(g.float().reshape(-1).index_select(0, kept) * sign, v, clip)
    m_new = m * beta1 + g * (1 - beta1)
    v_new = v * beta2 + g * g * (1 - beta2)
    flat = p.view(-1)
    p32 = flat.float()
    # Adam moves the kept entries only; the decoupled decay then shrinks every entry. A kept entry with a
    # NaN/Inf gradient keeps its value; the others never read their gradient.
    p_new = p32.index_add(0, kept, -(step_size * (m_new / (v_new.sqrt() + eps)))) * decay
    p_new = keep_unmoved(p_new, p32, finite, kept)
    m.copy_(torch.where(finite & gate, m_new, m))
    v.copy_(torch.where(finite & gate, v_new, v))
    flat.copy_(torch.where(gate, p_new, p32))
    n.copy_(n + gate)
    return torch.where(gate, spike.sum(), 0), gate & ~finite.all()


@functools.cache
def _compiled() -> tuple:
    return (torch.compile(_dense_step, dynamic=True, fullgraph=True),
            torch.compile(_sparse_step, dynamic=True, fullgraph=True))


@functools.cache
def compiled_unavailable_reason(device: torch.device) -> str | None:
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


def spam_compiled(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                  h: StepScalars) -> KernelResult:
    """One compiled graph per parameter; no host synchronisation (see the module docstring). 8-bit moments
    are dequantized and requantized around the graph, one parameter at a time, in eager torch."""
    return on_float32_moments(_compiled_step, params, grads, states, gate, h)


def _compiled_step(params: list[Tensor], grads: list[Tensor], states: list[TensorState], gate: Tensor | None,
                   h: StepScalars) -> KernelResult:
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
    n1 = torch.stack([st.step for st in states]) + 1
    step_sizes = (lr_w * (1 - torch.pow(h.beta2, n1)).sqrt() / (1 - torch.pow(h.beta1, n1))).unbind()

    dense, sparse = _compiled()
    clipped: list[Tensor] = []
    nonfinite: list[Tensor] = []
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        for i, (p, g, st) in enumerate(zip(params, grads, states)):
            m, v, n, entries = st.exp_avg, st.exp_avg_sq, st.step, st.kept
            if not _handles(p, entries):
                result = spam_reference([p], [g], [st], gate, h)
                c, f = result.clipped[0], result.nonfinite[0]
            elif entries is None:
                p, g, m, v = _as_rows(p, g, m, v)
                c, f = dense(p, g, m, v, n, step_sizes[i], gate, decay, clip, sign, h.beta1, h.beta2, h.eps)
            else:
                c, f = sparse(p, g, m, v, n, entries.indices(), step_sizes[i], gate, decay, clip, sign,
                              h.beta1, h.beta2, h.eps)
            clipped.append(c)
            nonfinite.append(f)
    return KernelResult(clipped, nonfinite)
