"""One rule picks every optimizer's kernel from its foreach/fused flags, and one policy handles a C++ kernel
that cannot be built or loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spam_opt import SPAM, StableSPAM
from spam_opt.kernels import cpp_build, dispatch
from spam_opt.kernels.dispatch import SPAM_KERNELS, STABLE_SPAM_KERNELS, select_kernel
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.spam.cpp import spam_cpp
from spam_opt.kernels.stable_spam.compiled import stable_spam_compiled
from spam_opt.kernels.stable_spam.cpp import stable_spam_cpp

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
TABLES = [pytest.param(SPAM_KERNELS, spam_cpp, id="SPAM"),
          pytest.param(STABLE_SPAM_KERNELS, stable_spam_cpp, id="StableSPAM")]


@pytest.mark.parametrize(("table", "cpp"), TABLES)
def test_flags_pick_the_paths_they_name_on_cpu(table, cpp):
    assert select_kernel(table, None, None, CPU) is cpp  # built once per machine, fast at any size
    assert select_kernel(table, None, True, CPU) is cpp
    assert select_kernel(table, True, None, CPU) is table.foreach
    assert select_kernel(table, True, False, CPU) is table.foreach
    assert select_kernel(table, None, False, CPU) is table.foreach  # fused=False is honoured
    assert select_kernel(table, False, None, CPU) is table.reference
    assert select_kernel(table, False, False, CPU) is table.reference


@pytest.mark.parametrize(("table", "cpp"), TABLES)
def test_other_devices_default_to_foreach_and_fused_true_says_why_it_cannot_run(table, cpp):
    for device in (CUDA, META):
        assert select_kernel(table, None, None, device) is table.foreach
    with pytest.raises(RuntimeError, match="fused=True cannot run: .*got meta"):
        select_kernel(table, None, True, META)


@pytest.mark.parametrize("table, compiled", [(SPAM_KERNELS, spam_compiled),
                                              (STABLE_SPAM_KERNELS, stable_spam_compiled)])
def test_fused_on_cuda_is_the_compiled_step_but_never_the_default(table, compiled):
    """Until the compiled step has run on a GPU, CUDA's default is foreach; fused=True still asks for it."""
    kernel, reason = table.fused(CUDA)
    assert kernel is compiled
    assert select_kernel(table, None, None, CUDA) is table.foreach
    if reason is not None:  # this machine has no triton: fused=True says so rather than running eager
        with pytest.raises(RuntimeError, match="fused=True cannot run: torch.compile on CUDA needs triton"):
            select_kernel(table, None, True, CUDA)


@pytest.mark.parametrize("make", [SPAM, StableSPAM], ids=["SPAM", "StableSPAM"])
def test_a_failed_kernel_build_is_reported_and_automatic_selection_falls_back(make, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAM_OPT_CACHE", str(tmp_path))
    monkeypatch.setattr(cpp_build, "_compiler", lambda: "false")  # a "compiler" that always fails
    reason = cpp_build.load_library.__wrapped__(cpp_build.OPTIMIZER_SOURCE)
    assert reason.startswith("building the CPU kernel spam_cpu.cpp failed (false, exit 1)")
    assert not list(tmp_path.glob("*.so")), "a failed build must not leave a kernel behind"
    monkeypatch.setattr(dispatch, "load_optimizer_ops", lambda: reason)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="fused=True cannot run: building the CPU kernel"):
        make([p], fused=True).step()
    dispatch.warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match=f"{make.__name__} falls back to the slower foreach step"):
        make([p]).step()
    assert not torch.equal(p, torch.zeros(3)), "the fallback path must still step"


def test_an_unloadable_cached_kernel_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAM_OPT_CACHE", str(tmp_path))
    target = cpp_build.cached_library(cpp_build._compiler(), cpp_build.OPTIMIZER_SOURCE)
    target.write_bytes(b"not a shared library")  # say, a copy truncated by a full disk
    reason = cpp_build.load_library.__wrapped__(cpp_build.OPTIMIZER_SOURCE)
    assert reason.startswith("loading the CPU kernel") and "delete it to rebuild" in reason


def test_cpp_op_errors_name_the_op_that_failed():
    cpp_build.load_optimizer_ops()
    p, g = torch.zeros(4, dtype=torch.float64), torch.zeros(4)
    m, n = torch.zeros(4), torch.zeros(())
    with pytest.raises(RuntimeError, match=r"spam_step_: params\[0\] must be a contiguous float32 CPU"):
        torch.ops.spam_opt.spam_step_([p], [g], [m], [m], [n], [None], [None], None,
                                      1e-3, 0.9, 0.999, 1e-8, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"stable_spam_step_: params\[0\] must be a contiguous float32"):
        torch.ops.spam_opt.stable_spam_step_([p], [g], [m], [m], [n], [n], [n], [n], [False], None,
                                             1e-3, 0.9, 0.999, 0.7, 0.9, 0.999, 1e-8, 0.0)
