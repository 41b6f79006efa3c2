"""Stable-SPAM's Triton kernels (imported by ``triton_kernel`` when a step first runs: it needs triton).

Three per parameter: ``abs_max`` and ``clipped_square_sum`` write one partial result per program (of at
most ``PROGRAMS``, each looping over its share), ``update`` steps ``BLOCK`` entries per program with the
per-tensor scalars the first two led to (``update_8bit``: one block of 8-bit moments per program).
Parameters and gradients may be float32, bfloat16 or float16 (``precision_jit``).
"""

import triton
import triton.language as tl

from spam_opt.kernels.precision_jit import load_float32, store_rounded
from spam_opt.kernels.quantized_jit import block_entries, dequantize, requantize


# Sizes and positions vary per parameter: specializing on them would compile a variant for each kind.
@triton.jit(do_not_specialize=["index", "numel"])
def abs_max(g_ptr, amax_ptr, bad_ptr, index, numel, BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):
    """Partial max|g| over the finite entries, and the count of the others, of this program's share."""
    pid = tl.program_id(0)
    top = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        a = tl.abs(load_float32(g_ptr, offsets, offsets < numel))
        finite = a < float("inf")  # NaN compares False too
        top = tl.maximum(top, tl.where(finite, a, 0.0))
        bad += (~finite).to(tl.int32)
    tl.store(amax_ptr + index * PROGRAMS + pid, tl.max(top, axis=0))
    tl.store(bad_ptr + index * PROGRAMS + pid, tl.sum(bad, axis=0))


@triton.jit(do_not_specialize=["index", "n_params", "numel"])
def clipped_square_sum(g_ptr, scalars_ptr, sums_ptr, spikes_ptr, index, n_params, numel,
                       BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):
    """Partial sum of squares of the AdaClip-clipped gradient, and the count of clipped entries."""
    pid = tl.program_id(0)
    max_hat = tl.load(scalars_ptr + 0 * n_params + index)
    ratio = tl.load(scalars_ptr + 1 * n_params + index)
    total = tl.zeros([BLOCK], tl.float32)
    spikes = tl.zeros([BLOCK], tl.int32)
    for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        g = load_float32(g_ptr, offsets, offsets < numel)
        spike = tl.abs(g) > max_hat
        g = tl.where(spike, g * ratio, g)
        total += g * g
        spikes += spike.to(tl.int32)
    tl.store(sums_ptr + index * PROGRAMS + pid, tl.sum(total, axis=0))
    tl.store(spikes_ptr + index * PROGRAMS + pid, tl.sum(spikes, axis=0))


@triton.jit
def stable_spam_entries(p, g, m, v, scalars_ptr, index, n_params, decay, beta1, beta2, eps,
                        BLOCK: tl.constexpr):
    """Stable-SPAM's rule on a block of entries given the tensor's scalars: clip, normalise, reset, then the
    Adam update with decoupled decay where the tensor moves. Returns p, m and v to store."""
    # Per-tensor scalars as blocks: the interpreter does not combine a scalar comparison with a block's.
    zero = tl.zeros([BLOCK], tl.float32)
    max_hat = tl.load(scalars_ptr + 0 * n_params + index)
    ratio = tl.load(scalars_ptr + 1 * n_params + index)
    scale = tl.load(scalars_ptr + 2 * n_params + index)
    reset = zero + tl.load(scalars_ptr + 3 * n_params + index) > 0.5
    ok = zero + tl.load(scalars_ptr + 4 * n_params + index) > 0.5
    step = tl.load(scalars_ptr + 5 * n_params + index)
    bias2_sqrt = tl.load(scalars_ptr + 6 * n_params + index)
    g = tl.where(tl.abs(g) > max_hat, g * ratio, g) * scale
    m = tl.where(reset, 0.0, m)
    v = tl.where(reset, 0.0, v)
    m_new = m * beta1 + g * (1 - beta1)
    v_new = v * beta2 + g * g * (1 - beta2)
    p_new = p * decay - step * tl.div_rn(m_new, tl.div_rn(tl.sqrt_rn(v_new), bias2_sqrt) + eps)
    return tl.where(ok, p_new, p), tl.where(ok, m_new, m), tl.where(ok, v_new, v)


@triton.jit(do_not_specialize=["index", "n_params", "numel"])
def update(p_ptr, g_ptr, m_ptr, v_ptr, scalars_ptr, index, n_params, numel, decay, beta1, beta2, eps,
           BLOCK: tl.constexpr):
    """``BLOCK`` entries of a parameter with float32 moments."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    p, m, v = stable_spam_entries(
        load_float32(p_ptr, offsets, inside), load_float32(g_ptr, offsets, inside),
        tl.load(m_ptr + offsets, mask=inside, other=0.0), tl.load(v_ptr + offsets, mask=inside, other=0.0),
        scalars_ptr, index, n_params, decay, beta1, beta2, eps, BLOCK)
    store_rounded(p_ptr, offsets, p, inside)
    tl.store(m_ptr + offsets, m, mask=inside)
    tl.store(v_ptr + offsets, v, mask=inside)


@triton.jit(do_not_specialize=["index", "n_params", "row_length", "per_row"])
def update_8bit(p_ptr, g_ptr, r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, scalars_ptr, index, n_params,
                row_length, per_row, decay, beta1, beta2, eps, QBLOCK: tl.constexpr):
    """One block of 8-bit moments: dequantize, update, requantize with the block's new scales. The codes
    follow a reset even under a closed gate (row 7 of the scalars: the gate or the reset)."""
    block = tl.program_id(0).to(tl.int64)
    offsets, inside = block_entries(block, row_length, per_row, QBLOCK)
    m, v = dequantize(r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, offsets, inside, eps)
    p, m, v = stable_spam_entries(
        load_float32(p_ptr, offsets, inside), load_float32(g_ptr, offsets, inside),
        m, v, scalars_ptr, index, n_params, decay, beta1, beta2, eps, QBLOCK)
    store_rounded(p_ptr, offsets, p, inside)
    store = tl.zeros([QBLOCK], tl.float32) + tl.load(scalars_ptr + 7 * n_params + index) > 0.5
    requantize(m, v, r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, offsets, inside, store, eps, QBLOCK)
