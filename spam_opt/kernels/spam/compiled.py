"""The compiled SPAM kernel: one ``torch.compile``d graph per chunk of like tensors, every layout included.

``spam_opt.kernels.compiled_lists`` says how graphs are shared. Inside a graph each parameter's step is the
rule of ``spam_reference`` decided on device: read p, g and the moments (8-bit moments dequantized in the
same graph, and requantized after), clip, update, count; nothing is read on the host. Sparse momentum's
kept flat indices and the 8-bit layout's stored indices are computed before the graph (``nonzero_static``
sized by the state: no sync) and passed in.

Under ``fused=True`` on CUDA it steps what the Triton kernels (``triton_kernel.py``) do not take: float64
parameters (Inductor emits Triton there). On an H200 its compiles
took 30 s to over 2 minutes (benchmarks/results/gpu_run.md). The tests run the same graphs on CPU
(Inductor's C++) against the float64 references. Tensors it does not take (non-contiguous ones) go through
the foreach kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import (
    Codes,
    FlatGroup,
    compiled,
    contiguous,
    device_scalars,
    run_chunks,
    with_fallback,
)
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.inputs import QuantizedTensorState, StepScalars
from spam_opt.state.quantized import QuantizedMoments, block_ids


def _spam_lists(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor | None], vs: list[Tensor | None],
                codes: list[Codes | None], idxs: list[Tensor | None], ns: list[Tensor], gate: Tensor,
                lr_w: Tensor, decay: Tensor, clip: Tensor, sign: Tensor, beta1: float, beta2: float,
                eps: float) -> tuple[list[Tensor], list[Tensor]]:
    """One chunk's step. ``ps``: flat parameters (8-bit ones as rows); ``ms``/``vs`` float32 moments or
    ``codes`` 8-bit ones; ``idxs`` kept flat indices (None: dense)."""
    n1 = torch.stack(ns) + 1  # the count of this step's bias corrections
    step_sizes = lr_w * (1 - torch.pow(beta2, n1)).sqrt() / (1 - torch.pow(beta1, n1))
    clipped, nonfinite = [], []
    for i, (p, grad, idx, q) in enumerate(zip(ps, gs, idxs, codes)):
        flat = p.view(-1)
        blocks = None
        if q is None:
            m, v = ms[i], vs[i]
        else:
            moments = QuantizedMoments(*q, row_length=p.shape[-1], kept_bits=None)
            blocks = None if idx is None else block_ids(idx, p.shape[-1])
            m, v = moments.dequantize(blocks, eps)
        g = grad.reshape(-1).float() * sign
        if idx is not None:
            g = g.index_select(0, idx)
        finite = torch.isfinite(g)
        moves = finite & gate
        # clip is +inf when clipping is off at this step: no entry compares above inf (or NaN where v == 0).
        threshold = clip * v
        spike = finite & (v > 0) & (g * g > threshold)
        g = torch.where(spike, g.sign() * threshold.sqrt(), g)
        m_new = torch.where(moves, m * beta1 + g * (1 - beta1), m)
        v_new = torch.where(moves, v * beta2 + g * g * (1 - beta2), v)
        update = step_sizes[i] * (m_new / (v_new.sqrt() + eps))
        p32 = flat.float()
        if idx is None:
            p_new = torch.where(moves, (p32 - update) * decay, p32)
        else:
            # Adam moves the kept entries only; the decoupled decay then shrinks every entry. A kept entry
            # with a NaN/Inf gradient keeps its value; the others never read their gradient.
            kept = p32.index_select(0, idx)
            kept = torch.where(moves, (kept - update) * decay, kept)
            p_new = (p32 * torch.where(gate, decay, 1.0)).index_copy(0, idx, kept)
        flat.copy_(p_new)
        if q is None:
            m.copy_(m_new)
            v.copy_(v_new)
        else:
            moments.quantize_(m_new, v_new, blocks, eps, gate)
        ns[i].copy_(ns[i] + gate)
        clipped.append(torch.where(gate, spike.sum(), 0))
        nonfinite.append(gate & ~finite.all())
    return clipped, nonfinite


def _kind(p: Tensor, g: Tensor, st: Any) -> tuple:
    eight = isinstance(st, QuantizedTensorState)
    sparse = st.moments.kept_bits is not None if eight else st.kept is not None
    return p.dtype, g.dtype, eight, sparse, p.numel() <= 1


def spam_compiled(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                  h: StepScalars) -> KernelResult:
    """The group in a few compiled graphs (see the module docstring); no host synchronisation."""
    return with_fallback((contiguous(p, g) for p, g in zip(params, grads)), _compiled_step, spam_foreach,
                         params, grads, states, gate, h)


def _compiled_step(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                   h: StepScalars) -> KernelResult:
    device = params[0].device
    gate = torch.ones((), dtype=torch.bool, device=device) if gate is None else gate.to(device)
    # maximize is a sign and "no clipping" an infinite threshold: values, not branches, so one graph serves.
    scalars = device_scalars([h.lr * h.warmup_scale, 1 - h.lr * h.weight_decay,
                              math.inf if h.clip_threshold is None else h.clip_threshold,
                              -1.0 if h.maximize else 1.0], device)
    flat = FlatGroup.of(params, states)
    idxs = [st.moments.stored_indices(p.numel()) if isinstance(st, QuantizedTensorState)
            else None if st.kept is None else st.kept.indices() for p, st in zip(params, states)]
    step = compiled(_spam_lists)
    lists = (flat.params, grads, flat.exp_avgs, flat.exp_avg_sqs, flat.codes, idxs)
    return run_chunks([_kind(p, g, st) for p, g, st in zip(params, grads, states)],
                      lambda chunk: step(*([lst[i] for i in chunk] for lst in lists),
                                         [states[i].step for i in chunk], gate, *scalars, h.beta1, h.beta2,
                                         h.eps), gate)
