"""Compile the Triton optimizer kernels for NVIDIA GPUs without a GPU, with Triton's own ptxas.

    python tests/triton_aot.py 80 90      # compute capabilities; prints one line per (kernel, target)

Run in a process without ``TRITON_INTERPRET`` (the interpreter never lowers a kernel): this is what a GPU
would compile at the first step, so a kernel that only the interpreter accepts fails here.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from spam_opt.kernels.spam import triton_kernel as spam
from spam_opt.kernels.stable_spam import triton_kernel as stable_spam
from spam_opt.kernels.triton_steps import BLOCK, REDUCTION_PROGRAMS
from spam_opt.state.quantized import BLOCK as QBLOCK

F32, I32 = "*fp32", "*i32"
# Argument types as a launch passes them: float32 tensors, int32 counters, sizes up to 2^63, host floats.
TYPES = {"counts_ptr": I32, "bad_ptr": I32, "spikes_ptr": I32, "r_ptr": "*i8", "s_ptr": "*u8", "index": "i32",
         "n_params": "i32", "numel": "i64", "row_length": "i32", "per_row": "i32",
         "bits_ptr": I32, "starts_ptr": "*i64"}
# The tensors in the parameter's dtype, for the bfloat16 variant (float16 takes float32's conversions).
PARAMETER_PTRS = ("p_ptr", "g_ptr")


def signature(fn, sparse: bool, parameter_type: str) -> tuple[dict, dict]:
    constants = {"BLOCK": BLOCK, "PROGRAMS": REDUCTION_PROGRAMS, "QBLOCK": QBLOCK, "SPARSE": sparse}
    types, constexprs = {}, {}
    for position, name in enumerate(fn.arg_names):
        if name in constants:
            types[name], constexprs[(position,)] = "constexpr", constants[name]
        elif name in PARAMETER_PTRS:
            types[name] = parameter_type
        else:
            types[name] = TYPES.get(name, F32 if name.endswith("_ptr") else "fp32")
    return types, constexprs


def variants(fn) -> list[tuple[str, bool, str]]:
    """(suffix, sparse, parameter pointer type): float32, sparse where the kernel has the switch, bf16."""
    found = [("", False, F32)]
    if "SPARSE" in fn.arg_names:
        found.append(("[sparse]", True, F32))
    return [*found, ("[bf16]", False, "*bf16")]


def main(capabilities: list[int]) -> None:
    for fn in (*spam._kernels(), *stable_spam._kernels()):
        for suffix, sparse, parameter_type in variants(fn):
            types, constexprs = signature(fn, sparse, parameter_type)
            name = fn.__name__ + suffix
            for capability in capabilities:
                compiled = triton.compile(ASTSource(fn=fn, signature=types, constexprs=constexprs),
                                          target=GPUTarget("cuda", capability, 32))
                print(f"{name} sm_{capability}: {len(compiled.asm['cubin'])} bytes of cubin")


if __name__ == "__main__":
    main([int(c) for c in sys.argv[1:]])
