"""Triton helpers for 8-bit moments (``spam_opt.state.quantized``): a block's entries, its dequantization and
its requantization with new scales, shared by the SPAM and Stable-SPAM kernels (it needs triton: imported
only by their ``triton_jit`` modules).

A program takes one block: ``QBLOCK`` consecutive entries of one row, the last block of a row masked.
"""

import triton
import triton.language as tl


@triton.jit
def block_entries(block, row_length, per_row, QBLOCK: tl.constexpr):
    """The flat offsets of block ``block``'s entries, and which exist (a row's last block may be short)."""
    column = (block % per_row) * QBLOCK + tl.arange(0, QBLOCK)
    return (block // per_row) * row_length + column, column < row_length


@triton.jit
def dequantize(r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, offsets, inside, eps):
    """(m̂, v̂) of a block: ŝ = code_s² · s_scale / 255², m̂ = code_r · r_scale / 127 · (ŝ + eps), v̂ = ŝ²."""
    code_s = tl.load(s_ptr + offsets, mask=inside, other=0).to(tl.float32)
    s_hat = code_s * code_s * (tl.load(s_scale_ptr + block) / 65025.0)
    code_r = tl.load(r_ptr + offsets, mask=inside, other=0).to(tl.float32)
    r_hat = code_r * (tl.load(r_scale_ptr + block) / 127.0)
    return r_hat * (s_hat + eps), s_hat * s_hat


@triton.jit
def round_half_even(x):
    """x to the nearest integer, ties to even, as torch.round (the interpreter has no rint)."""
    low = tl.floor(x)
    frac = x - low  # exact in the codes' range
    odd = low - 2.0 * tl.floor(low * 0.5)
    return tl.where((frac > 0.5) | ((frac == 0.5) & (odd != 0)), low + 1.0, low)


@triton.jit
def requantize(m, v, r_ptr, s_ptr, r_scale_ptr, s_scale_ptr, block, offsets, inside, store, eps,
               QBLOCK: tl.constexpr):
    """Store a block's float32 moments as codes with the block's new scales, where ``store`` (a block of
    one flag) holds: s = sqrt(v), r = m / (s + eps), scales max |r| and max s."""
    s = tl.sqrt_rn(v)
    r = tl.div_rn(m, s + eps)
    r_scale = tl.max(tl.where(inside, tl.abs(r), 0.0), axis=0)
    s_scale = tl.max(tl.where(inside, s, 0.0), axis=0)
    r_inv = tl.where(r_scale > 0, tl.div_rn(127.0, r_scale), 0.0)
    s_inv = tl.where(s_scale > 0, tl.div_rn(65025.0, s_scale), 0.0)
    code_r = tl.minimum(tl.maximum(round_half_even(r * r_inv), -127.0), 127.0)
    code_s = tl.minimum(round_half_even(tl.sqrt_rn(s * s_inv)), 255.0)
    code_s = tl.where(s > 0, tl.maximum(code_s, 1.0), code_s)  # a second moment never rounds to 0
    tl.store(r_ptr + offsets, code_r.to(tl.int8), mask=inside & store)
    tl.store(s_ptr + offsets, code_s.to(tl.uint8), mask=inside & store)
    # The scales from the first lane only: a scalar store under a block's mask.
    first = (tl.arange(0, QBLOCK) == 0) & store
    lanes = block + tl.arange(0, QBLOCK) * 0
    tl.store(r_scale_ptr + lanes, r_scale + tl.zeros([QBLOCK], tl.float32), mask=first)
    tl.store(s_scale_ptr + lanes, s_scale + tl.zeros([QBLOCK], tl.float32), mask=first)
