"""The multi-step leaky integrate-and-fire (LIF) neuron of SpikeGPT, with the arctan surrogate gradient.

Forward, per time step t (the token axis), with membrane potential v (0 before the first step):

    h_t = v_{t-1} + (x_t - v_{t-1}) / tau          # leaky integration, input decayed too
    s_t = 1 if h_t >= v_threshold else 0          # the spike, exactly 0/1
    v_t = h_t * (1 - s_t)                         # hard reset to 0

Backward replaces dH/dh of the Heaviside step by the derivative of the arctan surrogate
``atan(pi/2 * alpha * x) / pi + 1/2``, i.e. ``alpha / 2 / (1 + (pi/2 * alpha * x)^2)``. The reset is not
detached (the gradient also flows through ``s_t`` in ``v_t``), as in SpikeGPT's neuron.

On CPU (float32 and float64) a C++ kernel runs the neuron, one pass over the time steps forward and one
back, on CUDA a Triton kernel does (``spikegpt_kernels.py`` picks). Elsewhere, and as the reference the tests
compare them with, the time loop
runs inside one autograd function with a hand-written backward, so autograd records one node per neuron
layer instead of a handful per token, and each token costs two small ops forward and one backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.models.spikegpt_kernels import lif_kernel, path_for, triton_kernels


def atan_surrogate_grad(x: Tensor, alpha: float) -> Tensor:
    """d/dx of ``atan(pi/2 * alpha * x) / pi + 1/2``, the smooth stand-in for the Heaviside step."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


class ATanSpike(torch.autograd.Function):
    """Heaviside step (``x >= 0``) forward, arctan surrogate backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad_out * atan_surrogate_grad(x, ctx.alpha), None


def atan_spike(x: Tensor, alpha: float = 2.0) -> Tensor:
    """Spikes ``x >= 0`` as 0/1 in ``x``'s dtype, differentiable through the arctan surrogate."""
    return ATanSpike.apply(x, alpha)


class _MultiStepLIF(torch.autograd.Function):
    """The LIF scan over dim 0 of ``x`` (time first); returns the spikes and the last membrane potential."""

    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[Tensor, Tensor]:
        decay = 1.0 - 1.0 / tau
        # The loop runs on negated potentials so that fire-and-reset is one op: threshold(g, -thr, 0) keeps
        # -h where h < thr and resets the rest to 0. Two ops per step, on pre-split views.
        neg_h = torch.empty_like(x)  # -(pre-reset potentials): all the backward pass needs
        neg_v = -v
        for drive_t, neg_h_t in zip((x / -tau).unbind(0), neg_h.unbind(0)):
            torch.add(drive_t, neg_v, alpha=decay, out=neg_h_t)
            neg_v = F.threshold(neg_h_t, -v_threshold, 0.0)
        ctx.save_for_backward(neg_h)
        ctx.constants = (tau, v_threshold, alpha)
        v = -neg_v
        ctx.mark_non_differentiable(v)  # a carried state for the next call; gradients stop there
        return (neg_h <= -v_threshold).to(x.dtype), v

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, _grad_v: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        (neg_h,) = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.constants
        surrogate = atan_surrogate_grad(neg_h + v_threshold, alpha)  # an even function of h - v_threshold
        # v_t = h_t * (1 - s_t): dv_t/dh_t = (1 - s_t) - h_t * ds_t/dh_t, with the non-detached reset, and
        # dh_{t+1}/dv_t = 1 - 1/tau; so dL/dh_t = dL/ds_t * ds_t/dh_t + dL/dh_{t+1} * carry_t.
        decay = 1.0 - 1.0 / tau
        carry = torch.addcmul((neg_h > -v_threshold).to(neg_h.dtype), neg_h, surrogate).mul_(decay)
        grad_h = grad_spikes * surrogate
        rows, carries = grad_h.unbind(0), carry.unbind(0)
        for t in range(len(rows) - 2, -1, -1):
            rows[t].addcmul_(rows[t + 1], carries[t])
        return grad_h / tau, grad_h[0] * decay, None, None, None


class MultiStepLIF(nn.Module):
    """Leaky integrate-and-fire neurons run along the time axis (dim 1 of a ``(batch, time, ...)`` input).

    Returns the 0/1 spikes and the membrane potential after the last step, which a later call can carry on
    from (that is how a language model feeds one token at a time).

    Example::

        lif = MultiStepLIF(tau=2.0, v_threshold=1.0, alpha=2.0)
        spikes, v = lif(torch.randn(4, 16, 32))                # 16 steps
        more, v = lif(torch.randn(4, 1, 32), v)                # the 17th step
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 2.0) -> None:
        super().__init__()
        if not tau >= 1.0:
            raise ValueError(f"tau must be >= 1 (the membrane keeps 1 - 1/tau of its potential), got {tau}")
        if not alpha > 0:
            raise ValueError(f"the surrogate's alpha must be > 0, got {alpha}")
        self.tau, self.v_threshold, self.alpha = float(tau), float(v_threshold), float(alpha)

    def forward(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if v is None:
            v = x.new_zeros(x.shape[:1] + x.shape[2:])
        elif v.shape != x.shape[:1] + x.shape[2:]:
            raise ValueError(f"membrane state of shape {tuple(v.shape)} does not fit an input of shape "
                             f"{tuple(x.shape)}: it must be the input's shape without the time axis (dim 1)")
        v = v.to(x.dtype)
        path = path_for(x, "lif")
        if path != "reference":  # a kernel's scan over (batch, time, neurons), no transposes
            kernel = lif_kernel if path == "cpp" else triton_kernels().lif_triton
            batch, steps, neurons = x.shape[0], x.shape[1], math.prod(x.shape[2:])
            spikes, v_last = kernel(x.reshape(batch, steps, neurons), v.reshape(batch, neurons), self.tau,
                                    self.v_threshold, self.alpha)
            return spikes.view(x.shape), v_last.view(v.shape)
        # Time first makes every step a contiguous slice.
        spikes, v = _MultiStepLIF.apply(x.transpose(0, 1).contiguous(), v, self.tau,
                                        self.v_threshold, self.alpha)
        return spikes.transpose(0, 1), v

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, alpha={self.alpha}"
