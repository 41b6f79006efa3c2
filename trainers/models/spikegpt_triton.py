"""SpikeGPT's two recurrences as Triton kernels, for CUDA: one launch each way per call, whatever the length.

The pure-PyTorch paths (``spikegpt.py``, ``spiking_neuron.py``) loop over the tokens in Python, a few small
ops per token: on a GPU each is a kernel launch, and a forward and backward pass of ``spikegpt-small`` at
256 tokens makes about ten times LLaMA's launches. Here the loop over the tokens runs inside one kernel,
parallel over the batch and the channels:

- the WKV is flash-linear-attention's RWKV-4 kernel (``fla-core``), forward and backward. Its state is ours
  stacked, ``(B, 3, 1, C)``: the scaled sums and their log-scale. Its backward pass differentiates the
  log-scale too, where ours holds it constant (it is a reference point: the outputs do not depend on it);
  the gradient of the new log-scale that makes the two agree is passed in (see ``_WKV.backward``).
- the multi-step LIF neuron (hard reset, arctan surrogate; ``spiking_neuron.py`` states it) is a kernel of
  ours: the forward pass keeps the pre-reset potentials, the backward pass walks back over them.

Both compute in float32, the LIF from inputs of any float dtype (bfloat16 under autocast: its spikes and
membrane come back in that dtype, but the membrane is not rounded to it between steps, as the reference's
is). Under ``TRITON_INTERPRET=1`` (set before triton is imported) they run on CPU tensors too, slowly and
exactly: that is how the tests check them on machines without a GPU. ``spikegpt_kernels.py`` decides when
they run; ``launches`` counts them.
"""

from __future__ import annotations

import collections
import contextlib
import math
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

with warnings.catch_warnings():  # fla's import warns of a machine without a GPU, and of torch.jit's end
    warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from fla.ops.rwkv4.fused_recurrent import fused_recurrent_rwkv4_backward, fused_recurrent_rwkv4_forward

LIF_BLOCK = 128  # channels per program: one per thread of 4 warps
launches: collections.Counter[str] = collections.Counter()  # kernel name -> launches, for tests and counts


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``), on CPU tensors."""
    return bool(triton.knobs.runtime.interpret)


def _launch(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Counts a launch, and makes ``device`` current for it: Triton launches on the current GPU. The
    interpreter reads and writes the tensors through torch ops of its own, which a dispatch mode counting the
    model's ops would see: they are not the model's, and a GPU runs none."""
    launches[name] += 1
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _disable_current_modes() if interpreting() else contextlib.nullcontext()


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, k: Tensor, v: Tensor, num: Tensor, den: Tensor,
                log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        state = torch.stack([num, den, log_scale], dim=1)[:, :, None]
        with _launch("wkv_forward", k.device):
            out, states = fused_recurrent_rwkv4_forward(w, u, k, v, state)  # states: (B, 3, T + 1, C)
        num_t, den_t, log_scale_t = states[:, :, -1].unbind(1)
        ctx.save_for_backward(w, u, k, v, states[:, :, :-1], num_t, den_t)
        ctx.mark_non_differentiable(log_scale_t)
        ctx.set_materialize_grads(False)
        return out, num_t, den_t, log_scale_t

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_num: Tensor | None, grad_den: Tensor | None,
                 _grad_log_scale: None) -> tuple[Tensor | None, ...]:
        w, u, k, v, states, num_t, den_t = ctx.saved_tensors
        grad_out = torch.zeros_like(k) if grad_out is None else grad_out.contiguous()
        grad_num = torch.zeros_like(num_t) if grad_num is None else grad_num
        grad_den = torch.zeros_like(den_t) if grad_den is None else grad_den
        # The sums stand for num * exp(log_scale) (and den's); a loss of those alone changes with the
        # log-scale, the sums held, by grad_num * num + grad_den * den. With that gradient fla's backward
        # pass, which follows the log-scale through its running maximum, gives the gradients of a
        # constant log-scale: the ones the reference paths and the C++ kernel give.
        grad_log_scale = grad_num * num_t + grad_den * den_t
        grad_state = torch.stack([grad_num, grad_den, grad_log_scale], dim=1)[:, :, None]
        with _launch("wkv_backward", k.device):
            grad_w, grad_u, grad_k, grad_v, grad_states = fused_recurrent_rwkv4_backward(
                w, u, k, v, states, grad_out, grad_state)
        # fla's kernel returns the gradient of its parameter log(-w), i.e. w times that of w.
        return grad_w / w, grad_u, grad_k, grad_v, grad_states[:, 0, 0], grad_states[:, 1, 0], None


def wkv_triton(w: Tensor, u: Tensor, k: Tensor, v: Tensor, num: Tensor, den: Tensor,
               log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RWKV-4's WKV over float32 ``(B, T, C)`` keys and values from the carried sums, as ``wkv_kernel`` in
    ``spikegpt_kernels.py`` (same arguments and results; differentiable in all but the log-scale)."""
    if k.dtype != torch.float32:
        raise TypeError(f"the Triton WKV computes in float32, got {k.dtype} keys: cast them, or run "
                        "spikegpt_kernels.backend('cpp') or 'reference' for float64")
    return _WKV.apply(*(t.contiguous() for t in (w, u, k, v, num, den, log_scale)))


@triton.jit
def _lif_forward_kernel(x_ptr, v0_ptr, spikes_ptr, v_last_ptr, potentials_ptr, tokens, channels, tau, decay,
                        v_threshold, KEEP_POTENTIALS: tl.constexpr, BLOCK: tl.constexpr):
    # One program: one sequence's block of channels, all its tokens in order.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < channels
    v = tl.load(v0_ptr + row * channels + cols, mask=inside, other=0.0).to(tl.float32)
    at = row * tokens * channels + cols
    for _ in range(tokens):
        x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
        h = tl.math.div_rn(x, tau) + v * decay  # as the reference rounds it: x / tau, correctly rounded
        fired = h >= v_threshold
        tl.store(spikes_ptr + at, tl.where(fired, 1.0, 0.0).to(spikes_ptr.dtype.element_ty), mask=inside)
        if KEEP_POTENTIALS:
            tl.store(potentials_ptr + at, h, mask=inside)
        v = tl.where(fired, 0.0, h)
        at += channels
    tl.store(v_last_ptr + row * channels + cols, v.to(v_last_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _lif_backward_kernel(grad_spikes_ptr, potentials_ptr, grad_x_ptr, grad_v0_ptr, tokens, channels, tau,
                         decay, v_threshold, slope, half_alpha, BLOCK: tl.constexpr):
    # Back over the tokens: dL/dh_t = dL/ds_t sg_t + dL/dh_{t+1} (1 - 1/tau) ([h_t < thr] - h_t sg_t), with
    # sg_t = (alpha / 2) / (1 + (pi/2 alpha (h_t - thr))^2) the surrogate of ds_t/dh_t and the reset not
    # detached; dL/dx_t = dL/dh_t / tau, and the carried-in potential's gradient is dL/dh_0 (1 - 1/tau).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < channels
    grad_h = tl.zeros([BLOCK], dtype=tl.float32)
    at = (row * tokens + tokens - 1) * channels + cols
    for _ in range(tokens):
        h = tl.load(potentials_ptr + at, mask=inside, other=0.0)
        grad_s = tl.load(grad_spikes_ptr + at, mask=inside, other=0.0).to(tl.float32)
        y = (h - v_threshold) * slope
        surrogate = half_alpha / (1.0 + y * y)
        carry = decay * (tl.where(h < v_threshold, 1.0, 0.0) - h * surrogate)
        grad_h = grad_s * surrogate + grad_h * carry
        tl.store(grad_x_ptr + at, tl.math.div_rn(grad_h, tau).to(grad_x_ptr.dtype.element_ty), mask=inside)
        at -= channels
    tl.store(grad_v0_ptr + row * channels + cols, (grad_h * decay).to(grad_v0_ptr.dtype.element_ty),
             mask=inside)


def _grid(x: Tensor) -> tuple[int, int]:
    return x.shape[0], triton.cdiv(x.shape[2], LIF_BLOCK)


def _lif_forward(x: Tensor, v: Tensor, tau: float, v_threshold: float,
                 keep_potentials: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    spikes, v_last = torch.empty_like(x), torch.empty_like(v)
    potentials = torch.empty(x.shape, device=x.device, dtype=torch.float32) if keep_potentials else None
    with _launch("lif_forward", x.device):
        _lif_forward_kernel[_grid(x)](x, v, spikes, v_last, potentials if keep_potentials else spikes,
                                      x.shape[1], x.shape[2], tau, 1.0 - 1.0 / tau, v_threshold,
                                      KEEP_POTENTIALS=keep_potentials, BLOCK=LIF_BLOCK)
    return spikes, v_last, potentials


class _LIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[Tensor, Tensor]:
        spikes, v_last, potentials = _lif_forward(x, v, tau, v_threshold, True)
        ctx.save_for_backward(potentials)
        ctx.constants = (tau, v_threshold, alpha)
        ctx.dtypes = (x.dtype, v.dtype)
        ctx.mark_non_differentiable(v_last)  # a carried state for the next call; gradients stop there
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, _grad_v: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        (potentials,) = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.constants
        grad_spikes = grad_spikes.contiguous()
        grad_x = torch.empty(potentials.shape, device=potentials.device, dtype=ctx.dtypes[0])
        grad_v0 = torch.empty(potentials.shape[::2], device=potentials.device, dtype=ctx.dtypes[1])
        with _launch("lif_backward", potentials.device):
            _lif_backward_kernel[_grid(potentials)](grad_spikes, potentials, grad_x, grad_v0,
                                                    potentials.shape[1], potentials.shape[2], tau,
                                                    1.0 - 1.0 / tau, v_threshold, math.pi / 2 * alpha,
                                                    alpha / 2, BLOCK=LIF_BLOCK)
        return grad_x, grad_v0, None, None, None


def lif_triton(x: Tensor, v: Tensor, tau: float, v_threshold: float, alpha: float) -> tuple[Tensor, Tensor]:
    """The multi-step LIF along dim 1 of a ``(B, T, C)`` input from potentials ``v`` ``(B, C)``, as
    ``lif_kernel`` in ``spikegpt_kernels.py``: the 0/1 spikes in ``x``'s dtype and the last potentials."""
    x, v = x.contiguous(), v.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or v.requires_grad):
        return _LIF.apply(x, v, tau, v_threshold, alpha)
    spikes, v_last, _ = _lif_forward(x, v, tau, v_threshold, False)
    return spikes, v_last
