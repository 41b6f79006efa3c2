"""Triton helpers for parameters and gradients in float32, bfloat16 or float16: read as float32, step in
float32, and store back in the tensor's own dtype rounded once, to nearest even, as ``Tensor.copy_`` rounds
(the foreach and reference steps' "update in float32, round once"). Shared by the SPAM and Stable-SPAM
kernels (it needs triton: imported only by their ``triton_jit`` modules).
"""

import triton
import triton.language as tl


@triton.jit
def load_float32(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_rounded(ptr, offsets, x, mask):
    """Store float32 ``x`` at ``ptr + offsets`` in the pointer's dtype, rounded to nearest even."""
    if ptr.dtype.element_ty == tl.bfloat16:
        # bfloat16 is float32's upper half: round on the bits, and store them. Triton's interpreter converts
        # float32 to bfloat16 by truncation (and flushes subnormals), where a GPU rounds to nearest even:
        # on the bits both give what torch gives. A NaN keeps its sign and stays a (quiet) NaN.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        high = tl.where(x == x, rounded, (bits >> 16) | 0x40).to(tl.uint16)
        tl.store(ptr.to(tl.pointer_type(tl.uint16)) + offsets, high, mask=mask)
    else:
        tl.store(ptr + offsets, x.to(ptr.dtype.element_ty), mask=mask)
