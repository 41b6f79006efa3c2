"""SpikeGPT's kernels, and the one place that picks which path the model runs: ``"cpp"``, ``"triton"`` or
``"reference"``.

- ``"cpp"``: C++ CPU kernels (``csrc/spikegpt_cpu.cpp``) for the WKV recurrence, the multi-step LIF neuron
  and the element-wise work around them, each one pass forward and one back; float32 and float64. Compiled at
  first use, like the optimizers' kernels (``spam_opt._cpp_build``, cached under ``$SPAM_OPT_CACHE`` or
  ``~/.cache/spam_opt``); when they cannot be built a warning says why, once, and the reference runs.
- ``"triton"``: Triton kernels for the two recurrences (``spikegpt_triton.py``: the WKV in float32, the
  neuron from any float dtype), so that a forward and backward pass on a GPU launches a number of kernels
  that does not grow with the sequence. The element-wise work stays the PyTorch expressions: a few launches
  per layer. On CPU tensors they run only under ``TRITON_INTERPRET=1`` (the tests).
- ``"reference"``: the pure-PyTorch code in ``spikegpt.py`` and ``spiking_neuron.py``, which the tests
  compare the kernels with. It loops over the tokens in Python.

By default CPU tensors take the C++ kernels and CUDA tensors the Triton ones when triton and ``fla-core``
import (``pip install "spam-opt[gpu]"``) and the GPU is one Triton compiles for (compute capability 7.0 and
newer); else the reference, with one warning. A tensor the chosen path
cannot take (a bfloat16 one on C++, a float64 WKV on Triton) runs the reference; so does everything that
``torch.compile`` traces (the kernels have no fake implementations). :func:`backend` forces a path::

    with backend("reference"):     # the pure-PyTorch paths, e.g. to compare against
        loss = model(input_ids=ids, labels=ids).loss
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from spam_opt._cpp_build import library_unavailable_reason
from spam_opt.kernels.triton_steps import gpu_too_old_for_triton

SOURCE = Path(__file__).with_name("csrc") / "spikegpt_cpu.cpp"
BACKENDS = ("reference", "cpp", "triton")
CPP_DTYPES = (torch.float32, torch.float64)
# What the Triton kernels take: fla's WKV computes in float32 (the model casts to it); our neuron loads any
# float dtype and computes in float32, which float64 would lose.
TRITON_DTYPES = {"wkv": (torch.float32,), "lif": (torch.float32, torch.bfloat16, torch.float16)}
_forced: str | None = None


@functools.cache
def _unavailable_reason() -> str | None:
    reason = library_unavailable_reason(SOURCE)
    if reason is not None:
        warnings.warn(f"SpikeGPT runs its pure-PyTorch paths (slower on CPU): {reason}", RuntimeWarning,
                      stacklevel=4)
    return reason


@functools.cache
def _triton_import_error() -> str | None:
    """Why ``spikegpt_triton`` does not import (triton or fla-core missing or broken), or None."""
    try:
        triton_kernels()
    except Exception as error:  # a missing package, or one that fails at import (a mismatched version)
        return f"{type(error).__name__}: {error} (pip install 'spam-opt[gpu]')"
    return None


def triton_kernels() -> ModuleType:
    """``spikegpt_triton``, imported on first use: triton and fla take seconds to import."""
    from trainers.models import spikegpt_triton

    return spikegpt_triton


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Within this block SpikeGPT runs the path ``name`` (``"reference"``, ``"cpp"`` or ``"triton"``) in the
    whole process, where it can take the tensors' dtypes; an error says why when it cannot run at all (C++
    on a CUDA tensor, Triton on a CPU tensor without ``TRITON_INTERPRET=1``, a kernel that did not build)."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"unknown SpikeGPT backend {name!r}: choose one of {', '.join(BACKENDS)}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def path_for(x: Tensor, op: str) -> str:
    """The path that runs ``op`` (``"wkv"``, ``"lif"`` or ``"elementwise"``) on ``x``: ``"cpp"``,
    ``"triton"`` or ``"reference"``, by the rules in this module's docstring."""
    if _forced == "reference" or torch.compiler.is_compiling():
        return "reference"
    if _forced == "cpp" or (_forced is None and x.is_cpu):
        if x.dtype not in CPP_DTYPES:
            return "reference"
        if not x.is_cpu:
            raise ValueError(f"SpikeGPT's C++ kernels run CPU tensors; this one is on {x.device}: use "
                             "backend('triton') or backend('reference')")
        if _forced is None:
            return "reference" if _unavailable_reason() is not None else "cpp"
        _ops()  # forced: an error that says why it cannot run
        return "cpp"
    if _forced is None and not x.is_cuda:
        return "reference"
    if x.dtype not in TRITON_DTYPES.get(op, ()):
        return "reference"
    too_old = _gpu_too_old(x.device) if x.is_cuda and torch.cuda.is_available() else None
    if _forced is None:
        reason = _triton_import_error() or too_old
        if reason is not None:
            _warn_once(f"SpikeGPT runs its pure-PyTorch paths on {x.device.type} (launch-bound): {reason}")
            return "reference"
        return "triton"
    if too_old is not None:
        raise RuntimeError(f"backend('triton') cannot run on {x.device}: {too_old}; use backend('reference')")
    if x.is_cpu and not triton_kernels().interpreting():
        raise RuntimeError("backend('triton') on CPU tensors needs Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before triton is imported")
    return "triton"


@functools.cache
def _gpu_too_old(device: torch.device) -> str | None:
    return gpu_too_old_for_triton(device)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _ops() -> torch._ops._OpNamespace:
    """``torch.ops.spikegpt``, built and loaded; an error that says why when it cannot be."""
    reason = _unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"SpikeGPT's C++ kernels cannot run: {reason}")
    return torch.ops.spikegpt


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd must record the call; when not, the wrappers call the forward op alone."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, k: Tensor, v: Tensor, num: Tensor, den: Tensor,
                log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out, num_t, den_t, log_scale_t = _ops().wkv_forward(w, u, k, v, num, den, log_scale)
        ctx.save_for_backward(w, u, k, v, num, den, log_scale)  # the backward pass recomputes the sums
        ctx.mark_non_differentiable(log_scale_t)  # a reference point: the reference path detaches it too
        ctx.set_materialize_grads(False)
        return out, num_t, den_t, log_scale_t

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_num: Tensor | None, grad_den: Tensor | None,
                 _grad_log_scale: None) -> tuple[Tensor | None, ...]:
        w, u, k, v, num, den, log_scale = ctx.saved_tensors
        grad_out = torch.zeros_like(k) if grad_out is None else grad_out.contiguous()
        grad_num, grad_den = (None if g is None else g.contiguous() for g in (grad_num, grad_den))
        return (*_ops().wkv_backward(w, u, k, v, num, den, log_scale, grad_out, grad_num, grad_den), None)


def wkv_kernel(w: Tensor, u: Tensor, k: Tensor, v: Tensor, num: Tensor, den: Tensor,
               log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RWKV-4's WKV over ``(B, T, C)`` keys and values, from the carried sums ``(num, den, log_scale)``.

    Returns the output and the new sums, as ``wkv_recurrent`` in ``spikegpt.py`` (which states the
    recurrence) does. Differentiable in all but ``log_scale``, which, as in ``wkv_parallel``, is held
    constant: the outputs do not depend on it.
    """
    args = [t.contiguous() for t in (w, u, k, v, num, den, log_scale)]
    return _WKV.apply(*args) if _needs_grad(*args) else _ops().wkv_forward(*args)


class _LIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, tau: float, v_threshold: float,
                alpha: float) -> tuple[Tensor, Tensor]:
        spikes, v_last, potentials = _ops().lif_forward(x, v, tau, v_threshold, True)
        ctx.save_for_backward(potentials)
        ctx.constants = (tau, v_threshold, alpha)
        ctx.mark_non_differentiable(v_last)  # a carried state for the next call; gradients stop there
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, _grad_v: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        (potentials,) = ctx.saved_tensors
        return (*_ops().lif_backward(grad_spikes.contiguous(), potentials, *ctx.constants), None, None, None)


def lif_kernel(x: Tensor, v: Tensor, tau: float, v_threshold: float, alpha: float) -> tuple[Tensor, Tensor]:
    """The multi-step LIF along dim 1 of a ``(B, T, C)`` input, from membrane potentials ``v`` ``(B, C)``.

    Returns the 0/1 spikes and the last potentials, as ``MultiStepLIF``'s reference path does.
    """
    x, v = x.contiguous(), v.contiguous()
    if _needs_grad(x, v):
        return _LIF.apply(x, v, tau, v_threshold, alpha)
    spikes, v_last, _ = _ops().lif_forward(x, v, tau, v_threshold, False)
    return spikes, v_last


class _ShiftMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, previous: Tensor, *mixes: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(x, previous, *mixes)
        return tuple(_ops().shift_mix_forward(x, previous, mixes))

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor, ...]:
        x, previous, *mixes = ctx.saved_tensors
        grad_x, grad_previous, grad_mixes = _ops().shift_mix_backward([g.contiguous() for g in grads], x,
                                                                      previous, mixes)
        return grad_x, grad_previous, *grad_mixes


def shift_mix_kernel(x: Tensor, previous: Tensor, mixes: list[Tensor]) -> list[Tensor]:
    """``lerp(xx, x, m)`` for each of 1 to 3 mixing vectors ``m`` ``(C,)``, ``xx`` being ``x`` ``(B, T, C)``
    shifted one token back with ``previous`` ``(B, C)`` first: RWKV's inputs to its projections."""
    x, previous = x.contiguous(), previous.contiguous()
    mixes = [m.to(x.dtype).contiguous() for m in mixes]
    if _needs_grad(x, previous, *mixes):
        return list(_ShiftMix.apply(x, previous, *mixes))
    return _ops().shift_mix_forward(x, previous, mixes)


class _SigmoidGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(r, x)
        return _ops().sigmoid_gate_forward(r, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        return _ops().sigmoid_gate_backward(grad.contiguous(), *ctx.saved_tensors)


def sigmoid_gate_kernel(r: Tensor, x: Tensor) -> Tensor:
    """``sigmoid(r) * x`` for ``r`` and ``x`` of one shape and dtype."""
    r, x = r.contiguous(), x.contiguous()
    return _SigmoidGate.apply(r, x) if _needs_grad(r, x) else _ops().sigmoid_gate_forward(r, x)


class _ReluSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k: Tensor) -> Tensor:
        ctx.save_for_backward(k)
        return _ops().relu_square_forward(k)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _ops().relu_square_backward(grad.contiguous(), *ctx.saved_tensors)


def relu_square_kernel(k: Tensor) -> Tensor:
    """``relu(k) ** 2``."""
    k = k.contiguous()
    return _ReluSquare.apply(k) if _needs_grad(k) else _ops().relu_square_forward(k)
