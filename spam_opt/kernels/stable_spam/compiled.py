"""The compiled Stable-SPAM kernel: one ``torch.compile``d graph per chunk of like tensors, float32 and 8-bit
moments alike.

``spam_opt.kernels.compiled_lists`` says how graphs are shared. Inside a graph each tensor's step is the rule
of ``stable_spam_reference`` decided on device: AdaClip's max|g| and AdaGN's norm are reductions in the graph,
the reset is a 0-dim bool tensor (so a reset step reuses the graph), 8-bit moments are dequantized and
requantized in the same graph. Nothing is read on the host.

Under ``fused=True`` on CUDA it steps what the Triton kernels (``triton_kernel.py``) do not take: float64
parameters (Triton through Inductor). The tests run the same graphs on CPU
(Inductor's C++) against the float64 references. Sharded (FSDP2) tensors, whose statistics need
collectives, and non-contiguous ones go through foreach.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spam_opt.kernels.compiled_lists import (
    Codes,
    FlatGroup,
    compiled,
    contiguous,
    device_flags,
    device_scalars,
    run_chunks,
    with_fallback,
)
from spam_opt.kernels.result import KernelResult
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.stable_spam.inputs import QuantizedTensorState, StepScalars
from spam_opt.state.quantized import QuantizedMoments

_SCALARS = ("step", "max_ema", "norm_ema", "norm_sq_ema")


def _stable_spam_lists(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor | None], vs: list[Tensor | None],
                       codes: list[Codes | None], scalars: list[list[Tensor]], resets: Tensor, gate: Tensor,
                       lr: Tensor, beta1: Tensor, gamma1: Tensor, decay: Tensor, beta2: float, gamma2: float,
                       theta: float, eps: float) -> tuple[list[Tensor], list[Tensor]]:
    """One chunk's step. ``ps``: flat parameters (8-bit ones as rows); ``ms``/``vs`` float32 moments or
    ``codes`` 8-bit ones; ``scalars``: per tensor (n, A, M, V); ``resets``: one bool per tensor."""
    clipped, nonfinite = [], []
    for i, (p, grad, q, (n, max_ema, norm_ema, norm_sq_ema)) in enumerate(zip(ps, gs, codes, scalars)):
        flat = p.view(-1)
        if q is None:
            m, v = ms[i], vs[i]
        else:
            moments = QuantizedMoments(*q, row_length=p.shape[-1], kept_bits=None)
            m, v = moments.dequantize(None, eps)
        g = grad.reshape(-1).float()
        amax = g.abs().amax()
        finite = torch.isfinite(amax)
        ok = finite & gate
        n_c = n + 1
        a_new = max_ema * theta + amax * (1 - theta)
        max_hat = a_new / (1 - torch.pow(theta, n_c))
        spike = g.abs() > max_hat
        g = torch.where(spike, g * (max_hat / amax), g)
        norm = g.square().sum().sqrt()
        m_ema = norm_ema * gamma1 + norm * (1 - gamma1)
        v_ema = norm_sq_ema * gamma2 + norm.square() * (1 - gamma2)
        target = (m_ema / (1 - torch.pow(gamma1, n_c))) / (
            (v_ema / (1 - torch.pow(gamma2, n_c))).sqrt() + eps)
        g = g * torch.where(norm > 0, target / norm, 1.0)
        reset = resets[i]
        m0, v0, n0 = torch.where(reset, 0.0, m), torch.where(reset, 0.0, v), torch.where(reset, 0.0, n)
        n_new = n0 + 1
        m_new = m0 * beta1 + g * (1 - beta1)
        v_new = v0 * beta2 + g * g * (1 - beta2)
        bias1 = 1 - torch.pow(beta1, n_new)
        bias2 = 1 - torch.pow(beta2, n_new)
        p32 = flat.float()
        p_new = p32 * decay - (lr / bias1) * m_new / (v_new.sqrt() / bias2.sqrt() + eps)
        flat.copy_(torch.where(ok, p_new, p32))
        m_out, v_out = torch.where(ok, m_new, m0), torch.where(ok, v_new, v0)
        if q is None:
            m.copy_(m_out)
            v.copy_(v_out)
        else:
            moments.quantize_(m_out, v_out, None, eps, gate)
        n.copy_(torch.where(ok, n_new, n0))
        max_ema.copy_(torch.where(ok, a_new, max_ema))
        norm_ema.copy_(torch.where(ok, m_ema, norm_ema))
        norm_sq_ema.copy_(torch.where(ok, v_ema, norm_sq_ema))
        clipped.append(torch.where(ok, spike.sum(), 0))
        nonfinite.append(~finite)
    return clipped, nonfinite


def stable_spam_compiled(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                         h: StepScalars) -> KernelResult:
    """The group in a few compiled graphs (see the module docstring); no host synchronisation."""
    takes = (not st.shard_groups and p.numel() > 0 and contiguous(p, g)
             for p, g, st in zip(params, grads, states))
    return with_fallback(takes, _compiled_step, stable_spam_foreach, params, grads, states, gate, h)


def _kind(p: Tensor, g: Tensor, st: Any) -> tuple:
    return p.dtype, g.dtype, isinstance(st, QuantizedTensorState), p.numel() <= 1


def _compiled_step(params: list[Tensor], grads: list[Tensor], states: list[Any], gate: Tensor | None,
                   h: StepScalars) -> KernelResult:
    device = params[0].device
    gate = torch.ones((), dtype=torch.bool, device=device) if gate is None else gate.to(device)
    values = device_scalars([h.lr, h.beta1, h.gamma1, 1 - h.lr * h.weight_decay], device)
    flat = FlatGroup.of(params, states)
    step = compiled(_stable_spam_lists)
    lists = (flat.params, grads, flat.exp_avgs, flat.exp_avg_sqs, flat.codes)
    return run_chunks([_kind(p, g, st) for p, g, st in zip(params, grads, states)],
                      lambda chunk: step(*([lst[i] for i in chunk] for lst in lists),
                                         [[getattr(states[i], k) for k in _SCALARS] for i in chunk],
                                         device_flags([states[i].reset for i in chunk], device), gate,
                                         *values, h.beta2, h.gamma2, h.theta, h.eps), gate)
