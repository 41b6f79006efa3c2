"""SPAM's Triton kernels (imported by ``triton_kernel`` when a step first runs: it needs triton).

``spam_float32_step`` steps ``BLOCK`` entries of a parameter with float32 moments per program (under sparse
momentum the kept ones among them with their stored moments, the others decayed);
``spam_8bit_step`` one block of 8-bit moments (``spam_opt.state.quantized``) per program, dequantized,
stepped and requantized with the block's new scales in registers (under sparse momentum the block's kept
entries, whose codes are contiguous). Both add the step's clip and NaN/Inf counts to a per-parameter counter
on the device. Parameters and gradients may be float32, bfloat16 or float16 (``precision_jit``).
"""

import triton
import triton.language as tl

from spam_opt.kernels.precision_jit import load_float32, store_rounded
from spam_opt.kernels.quantized_jit import block_entries, dequantize, requantize


@triton.jit
def spam_entries(p, g, m, v, gate, step_size, decay, clip, sign, beta1, beta2, eps):
    """SPAM's rule on a block of entries: (p, m, v) after the step, the spikes and the finite entries."""
    g = g * sign
    finite = tl.abs(g) < float("inf")  # NaN compares False too
    moves = finite & gate
    # clip is +inf when clipping is off at this step: nothing compares above it (nor above NaN, v == 0).
    threshold = clip * v
    spike = finite & (v > 0) & (g * g > threshold)
    g = tl.where(spike, tl.where(g < 0, -1.0, 1.0) * tl.sqrt_rn(threshold), g)
    m_new = tl.where(moves, m * beta1 + g * (1 - beta1), m)
    v_new = tl.where(moves, v * beta2 + g * g * (1 - beta2), v)
    update = step_size * tl.div_rn(m_new, tl.sqrt_rn(v_new) + eps)
    return tl.where(moves, (p - update) * decay, p), m_new, v_new, spike & gate, finite


@triton.jit
def add_counts(counts_ptr, index, n_params, spike, finite, inside):
    # Spikes and NaN/Inf entries are rare: most programs add nothing, so the atomics rarely contend.
    spikes = tl.sum((spike & inside).to(tl.int32), axis=0)
    if spikes > 0:
        tl.atomic_add(counts_ptr + index, spikes)
    bad = tl.sum((~finite & inside).to(tl.int32), axis=0)
    if bad > 0:
        tl.atomic_add(counts_ptr + n_params + index, bad)


@triton.jit
def kept_positions(bits_ptr, starts_ptr, span, offsets, inside):
    """Under sparse momentum, which of a span's entries are kept (bit ``i % 32`` of word ``i // 32`` of the
    bitmap) and where their stored moments are: ``starts[span]`` on, in order (the kept entries' moments are
    stored in ascending order of flat index)."""
    words = tl.load(bits_ptr + (offsets >> 5), mask=inside, other=0)
    kept = inside & (((words >> (offsets & 31).to(tl.int32)) & 1) != 0)
    ones = kept.to(tl.int32)
    return kept, tl.load(starts_ptr + span) + (tl.cumsum(ones, axis=0) - ones)


# Sizes and positions vary per parameter: specializing on them would compile a variant for each kind.
@triton.jit(do_not_specialize=["index", "n_params", "numel"])
def spam_float32_step(p_ptr, g_ptr, m_ptr, v_ptr, bits_ptr, starts_ptr, step_size_ptr, gate_ptr, counts_ptr,
                      index, n_params, numel, decay, clip, sign, beta1, beta2, eps, BLOCK: tl.constexpr,
                      SPARSE: tl.constexpr):
    """``BLOCK`` entries of a parameter with float32 moments per program, p written in place. Sparse
    momentum (``bits``: the kept entries' bitmap, ``starts``: the kept entries before each program's
    ``BLOCK``): the kept entries step with their stored moments; the others read as g = m = v = 0, which
    the rule turns into p · decay, the decoupled decay alone, as the reference gives them."""
    span = tl.program_id(0).to(tl.int64)
    offsets = span * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    if SPARSE:
        kept, stored = kept_positions(bits_ptr, starts_ptr, span, offsets, inside)
    else:
        kept, stored = inside, offsets
    # As a block: the interpreter does not combine a scalar comparison with a block's in `&`.
    gate = tl.zeros([BLOCK], tl.float32) + tl.load(gate_ptr) > 0.5
    p, m, v, spike, finite = spam_entries(
        load_float32(p_ptr, offsets, inside), load_float32(g_ptr, offsets, kept),
        tl.load(m_ptr + stored, mask=kept, other=0.0), tl.load(v_ptr + stored, mask=kept, other=0.0),
        gate, tl.load(step_size_ptr + index), decay, clip, sign, beta1, beta2, eps)
    store_rounded(p_ptr, offsets, p, inside)
    tl.store(m_ptr + stored, m, mask=kept)
    tl.store(v_ptr + stored, v, mask=kept)
    add_counts(counts_ptr, index, n_params, spike, finite, kept)


@triton.jit(do_not_specialize=["index", "n_params", "row_length", "per_row"])
def spam_8bit_step(p_ptr, g_ptr, r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, bits_ptr, starts_ptr, step_size_ptr,
                   gate_ptr, counts_ptr, index, n_params, row_length, per_row, decay, clip, sign, beta1,
                   beta2, eps, QBLOCK: tl.constexpr, SPARSE: tl.constexpr):
    """One block of 8-bit moments: dequantize, step, requantize with the block's new scales, in registers.
    A closed gate leaves codes, scales and p as they are.

    Sparse momentum (``bits``: the kept entries' bitmap, ``starts``: where each block's codes start): the
    block's kept entries have their codes at ``starts[block]`` on, in order. The others read as g = m = v = 0,
    which the rule turns into p · decay: the decoupled decay alone, as the reference gives them."""
    block = tl.program_id(0).to(tl.int64)
    offsets, inside = block_entries(block, row_length, per_row, QBLOCK)
    if SPARSE:
        kept, codes = kept_positions(bits_ptr, starts_ptr, block, offsets, inside)
    else:
        kept = inside
        codes = offsets
    gate = tl.zeros([QBLOCK], tl.float32) + tl.load(gate_ptr) > 0.5
    m, v = dequantize(r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, codes, kept, eps)
    p, m, v, spike, finite = spam_entries(
        load_float32(p_ptr, offsets, inside), load_float32(g_ptr, offsets, kept),
        m, v, gate, tl.load(step_size_ptr + index), decay, clip, sign, beta1, beta2, eps)
    store_rounded(p_ptr, offsets, p, inside & gate)
    requantize(m, v, r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, codes, kept, gate, eps, QBLOCK)
    add_counts(counts_ptr, index, n_params, spike, finite, kept)
