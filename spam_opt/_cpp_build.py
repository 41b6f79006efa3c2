"""Building and loading C++ kernels on the user's machine: compiled at first use, cached, never downloaded.

A source file is compiled with the machine's C++ compiler against torch's headers, for the SIMD level torch
itself runs at, into a cache keyed by the source, the flags and the torch and Python versions; the library
then registers its ops with ``torch.ops``. Nothing here knows what the ops compute: the optimizers' ops are
loaded by ``spam_opt.kernels.cpp_ops``, the monitor's by ``spam_opt.monitor.statistics``, and other packages
(the trainers' SpikeGPT model) load their own sources the same way, through ``library_unavailable_reason``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# Vector ISA flags per torch CPU capability: a kernel is built for what torch itself dispatches to here, and
# at::vec::Vectorized is told which of its implementations to use.
_ISA_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],
}
# -fno-math-errno lets sqrt vectorise, -fno-trapping-math lets a select between two computed values
# vectorise (nothing reads the FP exception flags). No -ffast-math (NaN, Inf and signed zeros must behave
# as in torch) and no FMA contraction, so that each operation rounds as the reference paths' ops do.
_BASE_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off", "-DNDEBUG"]


def cache_dir() -> Path:
    """Where built kernels live: $SPAM_OPT_CACHE, else ~/.cache/spam_opt."""
    root = os.environ.get("SPAM_OPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spam_opt")
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _command(compiler: str, source: Path, output: Path) -> list[str]:
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()]
    rpath = [f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()]
    return [compiler, *_BASE_FLAGS, *_ISA_FLAGS.get(capability, []), f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *includes, str(source), "-o", str(output), *libs, *rpath, "-lc10", "-ltorch_cpu"]


def cached_library(compiler: str, source: Path) -> Path:
    """Where the library built from ``source``, with these flags, for this torch and Python, lives."""
    probe = _command(compiler, source, Path("kernel.so"))
    key = hashlib.sha256("\0".join([source.read_text(), *probe, torch.__version__, sys.version]).encode())
    return cache_dir() / f"{source.stem}_{key.hexdigest()[:16]}.so"


@functools.cache
def library_unavailable_reason(source: Path) -> str | None:
    """Build ``source`` (once per machine and torch version) and load it into ``torch.ops``; why its ops
    cannot run, or None once they are registered.

    Example::

        reason = library_unavailable_reason(Path(__file__).with_name("csrc") / "my_ops.cpp")
        if reason is None:
            torch.ops.my_namespace.my_op(...)
    """
    compiler = _compiler()
    if compiler is None:
        return "building the CPU kernel needs a C++ compiler (g++ or clang++ on PATH, or $CXX)"
    target = cached_library(compiler, source)
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build under a temporary name, then rename: concurrent builders (DDP ranks) never see half of it.
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                partial = Path(tmp) / target.name
                done = subprocess.run(_command(compiler, source, partial), capture_output=True, text=True)
                if done.returncode != 0:
                    return (f"building the CPU kernel {source.name} failed ({compiler}, exit "
                            f"{done.returncode}): {done.stderr.strip()[-2000:]}")
                os.replace(partial, target)
        except OSError as exc:
            return (f"building the CPU kernel {source.name} failed: {exc} (set $SPAM_OPT_CACHE to a writable "
                    "directory)")
    try:
        torch.ops.load_library(str(target))
    except (OSError, RuntimeError) as exc:
        return f"loading the CPU kernel {target} failed: {exc} (delete it to rebuild)"
    return None
