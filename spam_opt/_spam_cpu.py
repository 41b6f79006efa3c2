"""The C++ SPAM and Stable-SPAM steps for CPU tensors (``csrc/spam_cpu.cpp``): built on first use, cached.

torch.compile's CPU code for the step made two passes per tensor and paid Python overhead per parameter;
this kernel makes one pass per tensor for SPAM (Stable-SPAM's per-tensor reductions need one or two reads
of g first) and takes a whole param group per call. It is compiled with the machine's C++ compiler against
torch's headers, for the SIMD level torch itself runs at, into a cache keyed by the source, the flags and
the torch version. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from spam_opt import _stable_spam_functional as S
from spam_opt._spam_functional import KernelResult, StepScalars, spam_foreach
from spam_opt.sparse import KeptEntries

_SOURCE = Path(__file__).with_name("csrc") / "spam_cpu.cpp"
# Vector ISA flags per torch CPU capability: the kernel is built for what torch itself dispatches to here,
# and at::vec::Vectorized (which the SPAM update is written in) is told which of its implementations to use.
_ISA_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],
}
# -fno-math-errno lets sqrt vectorise, -fno-trapping-math lets a select between two computed values
# vectorise (nothing reads the FP exception flags). No -ffast-math (NaN, Inf and signed zeros must behave
# as in torch) and no FMA contraction, so that each operation rounds as the reference path's ops do.
_BASE_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off",
               "-DNDEBUG"]


def cache_dir() -> Path:
    """Where built kernels live: $SPAM_OPT_CACHE, else ~/.cache/spam_opt."""
    root = os.environ.get("SPAM_OPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spam_opt")
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _command(compiler: str, output: Path) -> list[str]:
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()]
    rpath = [f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()]
    return [compiler, *_BASE_FLAGS, *_ISA_FLAGS.get(capability, []), f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *includes, str(_SOURCE), "-o", str(output), *libs, *rpath, "-lc10", "-ltorch_cpu"]


def cached_kernel(compiler: str) -> Path:
    """Where the kernel built from this source, with these flags, for this torch and Python, lives."""
    probe = _command(compiler, Path("kernel.so"))
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), *probe, torch.__version__, sys.version]).encode())
    return cache_dir() / f"spam_cpu_{key.hexdigest()[:16]}.so"


@functools.cache
def load() -> str | None:
    """Build (once per machine and torch version) and load the kernel; the reason it cannot run, or None."""
    compiler = _compiler()
    if compiler is None:
        return "building the CPU kernel needs a C++ compiler (g++ or clang++ on PATH, or $CXX)"
    target = cached_kernel(compiler)
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build under a temporary name, then rename: concurrent builders (DDP ranks) never see half
            # a file.
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                partial = Path(tmp) / target.name
                done = subprocess.run(_command(compiler, partial), capture_output=True, text=True)
                if done.returncode != 0:
                    return (f"building the CPU kernel failed ({compiler}, exit {done.returncode}): "
                            f"{done.stderr.strip()[-2000:]}")
                os.replace(partial, target)
        except OSError as exc:
            return f"building the CPU kernel failed: {exc} (set $SPAM_OPT_CACHE to a writable directory)"
    try:
        torch.ops.load_library(str(target))
    except (OSError, RuntimeError) as exc:
        return f"loading the CPU kernel {target} failed: {exc} (delete it to rebuild)"
    return None


@functools.cache
def warn_fallback(message: str) -> None:
    """Warn once per distinct message that an optimizer runs a slower path than it could."""
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def fused_or_fallback(reason: str | None, *, explicit: bool, optimizer: str) -> bool:
    """Whether a fused kernel whose availability is ``reason`` (None: available) should run.

    ``fused=True`` (``explicit``) that cannot run raises; automatic selection warns once and falls back.
    """
    if reason is None:
        return True
    if explicit:
        raise RuntimeError(f"fused=True cannot run: {reason}; use fused=None (automatic) or foreach=True")
    warn_fallback(f"{optimizer} falls back to the slower foreach step: {reason}")
    return False


def handles(p: Tensor, g: Tensor, m: Tensor) -> bool:
    """Whether the kernel takes this parameter: contiguous float32 CPU parameter, gradient and moments."""
    return (p.device.type == "cpu" and p.dtype == torch.float32 and g.dtype == torch.float32
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous())


def _split(taken: Iterable[bool]) -> tuple[list[int], list[int]]:
    """Positions the kernel takes, and the others."""
    fast: list[int] = []
    slow: list[int] = []
    for i, ok in enumerate(taken):
        (fast if ok else slow).append(i)
    return fast, slow


Counts = tuple[Iterable[Tensor], Iterable[Tensor]]


def _combine(n: int, parts: list[tuple[list[int], Counts]]) -> tuple[list[Tensor], list[Tensor]]:
    """Per-parameter (clipped, nonfinite) of a group from the parts that stepped its subsets of positions."""
    clipped: list[Tensor] = [torch.zeros((), dtype=torch.int64)] * n
    nonfinite: list[Tensor] = [torch.zeros((), dtype=torch.bool)] * n
    for positions, (part_clipped, part_nonfinite) in parts:
        for i, c, f in zip(positions, part_clipped, part_nonfinite):
            clipped[i], nonfinite[i] = c, f
    return clipped, nonfinite


def spam_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    counts: list[Tensor],
    kept: list[KeptEntries | None],
    gate: Tensor | None,
    h: StepScalars,
) -> KernelResult:
    """The group's float32 contiguous tensors in one kernel call; any others (bf16, strided) through foreach.

    ``load()`` must have succeeded.
    """
    columns = (params, grads, exp_avgs, exp_avg_sqs, counts)
    fast, slow = _split(handles(p, g, m) for p, g, m in zip(params, grads, exp_avgs))
    parts: list[tuple[list[int], Counts]] = []
    if fast:
        clip = float("inf") if h.clip_threshold is None else h.clip_threshold
        scalars = (h.lr * h.warmup_scale, h.beta1, h.beta2, h.eps, 1 - h.lr * h.weight_decay, clip,
                   -1.0 if h.maximize else 1.0)
        low = [None if kept[i] is None else kept[i].low for i in fast]
        starts = [None if kept[i] is None else kept[i].starts for i in fast]
        c, f = torch.ops.spam_opt.spam_step_(*([col[i] for i in fast] for col in columns), low, starts, gate,
                                             *scalars)
        parts.append((fast, (c.unbind(), f.unbind())))
    if slow:
        rest = spam_foreach(*([col[i] for i in slow] for col in (*columns, kept)), gate, h)
        parts.append((slow, (rest.clipped, rest.nonfinite)))
    return KernelResult(*_combine(len(params), parts))


def stable_spam_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[S.TensorState],
    resets: list[bool],
    shard_groups: list[S.ShardGroups],
    gate: Tensor | None,
    h: S.StepScalars,
) -> S.KernelResult:
    """Stable-SPAM: unsharded float32 contiguous tensors in one call (one or two reads of g, one update pass);
    sharded (FSDP2), low-precision or strided ones through foreach. ``load()`` must have succeeded."""
    fast, slow = _split(not groups and handles(p, g, st.exp_avg)
                        for p, g, st, groups in zip(params, grads, states, shard_groups))
    parts: list[tuple[list[int], Counts]] = []
    if fast:
        sts = [states[i] for i in fast]
        fields = [[getattr(st, f) for st in sts] for f in
                  ("exp_avg", "exp_avg_sq", "step", "max_ema", "norm_ema", "norm_sq_ema")]
        c, f = torch.ops.spam_opt.stable_spam_step_(
            [params[i] for i in fast], [grads[i] for i in fast], *fields, [resets[i] for i in fast], gate,
            h.lr, h.beta1, h.beta2, h.gamma1, h.gamma2, h.theta, h.eps, h.weight_decay)
        parts.append((fast, (c.unbind(), f.unbind())))
    if slow:
        rest = S.stable_spam_foreach(*([col[i] for i in slow] for col in (params, grads, states, resets,
                                                                          shard_groups)), gate, h)
        parts.append((slow, (rest.clipped, rest.nonfinite)))
    return S.KernelResult(*_combine(len(params), parts))
