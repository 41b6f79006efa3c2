"""Fake quantizers: round a tensor to a low-bit grid and return it in its own dtype ("quantize-dequantize").

Every quantizer works on groups of ``group_size`` consecutive entries along the last dimension (``None``:
the whole last dimension, i.e. per output channel for a weight, per token for an activation), so a
linear layer's groups run along its input dimension, the dimension its matmul reduces over. The
arithmetic is float32 whatever the input's dtype (bf16 and fp16 inputs are rounded back at the end), and
no scale is ever 0: an all-zero group comes back as zeros and a constant group as (very nearly) itself,
never NaN.

The functions are written for the CPU, where PyTorch's index-returning and masked ops on short groups
cost ten times a plain pass over the data: they use only passes, per-group reductions, and gathers and
scatters of a few entries per group. They run under ``no_grad``; :func:`straight_through` wraps one in
the straight-through estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

E2M1_MAX = 6.0  # OCP MX FP4 (E2M1): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6
E2M1_EMAX = 2  # the exponent of its largest value, 6 = 1.5 * 2**2
_EXPONENT_BITS = 0x7F800000  # float32: the exponent field; clearing the rest rounds down to a power of 2
_TINY = torch.finfo(torch.float32).tiny


def _groups(x: Tensor, group_size: int | None) -> Tensor:
    """``x`` in float32, viewed as rows of ``group_size`` consecutive entries along its last dimension."""
    return x.float().reshape(-1, group_size or x.shape[-1])


def _pow2_floor_(v: Tensor) -> Tensor:
    """``2**floor(log2 v)`` of positive normal float32 ``v``, exactly and in place."""
    v.view(torch.int32).bitwise_and_(_EXPONENT_BITS)
    return v


def _rank_keys(magnitude: Tensor) -> tuple[Tensor, int]:
    """Integer keys that order a group's magnitudes and carry each entry's position in their low bits.

    Non-negative float32 values order as their bit patterns do, so one integer max per group finds the
    largest magnitude and where it is. The position takes the lowest bits of the mantissa: magnitudes
    closer than 1 part in 2**(23 - position bits) (2**18 for groups of 32) rank as equals, broken by
    position.
    """
    width = magnitude.shape[-1]
    bits = max(width - 1, 1).bit_length()
    positions = torch.arange(width, dtype=torch.int32, device=magnitude.device)
    return magnitude.view(torch.int32).bitwise_and(-(1 << bits)).bitwise_or_(positions), (1 << bits) - 1


@torch.no_grad()
def minmax_int(x: Tensor, bits: int, group_size: int | None) -> Tensor:
    """Asymmetric min-max quantization to ``2**bits`` levels per group, round to nearest.

    The group's range [min, max], widened to include 0, is split into ``2**bits - 1`` steps and the zero
    point is an integer, so 0 stays exact. This is the Stable-SPAM paper's weight quantizer, whose groups
    straddle 0 in practice; widening only matters for a group of one sign, whose values past max - min
    the paper's code clips.
    """
    g = _groups(x, group_size)
    lo = g.amin(dim=-1, keepdim=True).clamp_(max=0)
    hi = g.amax(dim=-1, keepdim=True).clamp_(min=0)
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_(min=_TINY)
    zero = torch.round(-lo / scale)  # the integer code of 0, in [0, levels]
    # round(g / scale) + zero, clamped to [0, levels], minus zero; the bounds are tensors, and two
    # broadcast min/max passes cost less than one clamp with tensor bounds.
    q = (g / scale).round_()
    torch.maximum(q, -zero, out=q)
    torch.minimum(q, levels - zero, out=q)
    q.mul_(scale)
    return q.view(x.shape).to(x.dtype)


@torch.no_grad()
def absmax_int(x: Tensor, bits: int, group_size: int | None, keep: int = 0) -> Tensor:
    """Symmetric absmax quantization to the ``2**bits - 1`` levels ``-L..L`` (``L = 2**(bits-1) - 1``).

    ``keep``: the ``keep`` largest-magnitude entries of each group stay exact (the Stable-SPAM paper keeps
    2 per activation group) and the others are scaled by the largest magnitude that remains.
    """
    g = _groups(x, group_size)
    if keep >= g.shape[-1]:
        raise ValueError(f"a group of {g.shape[-1]} entries cannot keep {keep} of them exact")
    magnitude = g.abs()
    if keep:
        keys, position = _rank_keys(magnitude)
        kept = []
        for _ in range(keep):
            index = keys.amax(dim=-1, keepdim=True).bitwise_and_(position).long()
            kept.append(index)
            keys.scatter_(-1, index, -1)  # below every key: out of the running for the next max
        largest = magnitude.gather(-1, keys.amax(dim=-1, keepdim=True).bitwise_and_(position).long())
    else:
        largest = magnitude.amax(dim=-1, keepdim=True)
    scale = (largest / (2 ** (bits - 1) - 1)).clamp_(min=_TINY)
    out = (g / scale).round_().mul_(scale)  # |g / scale| <= L (to rounding) for the others: no clamp
    if keep:
        index = torch.cat(kept, dim=-1)
        out.scatter_(-1, index, g.gather(-1, index))
    return out.view(x.shape).to(x.dtype)


@torch.no_grad()
def mx_fp4(x: Tensor, group_size: int | None) -> Tensor:
    """OCP MX FP4: a power-of-two scale per group and E2M1 elements, round to nearest even, saturating.

    The scale is ``2**(floor(log2(absmax)) - 2)`` (the MX spec's shared exponent), so the group's largest
    magnitude lands in [4, 8) and rounds to 4 or 6 (values past 6 saturate to 6).
    """
    g = _groups(x, group_size)
    absmax = g.abs().amax(dim=-1, keepdim=True).clamp_(min=_TINY)
    scale = _pow2_floor_(absmax).mul_(2.0**-E2M1_EMAX)
    y = g / scale  # exact: a power of two
    # The E2M1 grid's spacing around y: 0.5 below 2, 1 in [2, 4), 2 from 4 on (subnormals share the first
    # binade's spacing), i.e. the power of two at or below |y| / 2, kept within [0.5, 2].
    step = _pow2_floor_(y.abs().mul_(0.5).clamp_(0.5, 2.0))
    q = y.div_(step).round_().mul_(step).clamp_(-E2M1_MAX, E2M1_MAX).mul_(scale)
    return q.view(x.shape).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, quantizer: Callable[[Tensor], Tensor]) -> Tensor:
        return quantizer(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(quantizer: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``quantizer(x)`` in the forward pass; its gradient is passed to ``x`` unchanged (the STE).

    Example::

        w_q = straight_through(lambda w: minmax_int(w, 4, 256), linear.weight)
    """
    return _StraightThrough.apply(x, quantizer)
