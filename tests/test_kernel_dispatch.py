"""One registry lists every optimizer's kernels per device, one rule picks among them from the foreach/fused
flags, and one policy handles a kernel that cannot run (a C++ kernel that cannot be built or loaded)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from spam_opt import SPAM, StableSPAM, _cpp_build
from spam_opt.kernels import dispatch
from spam_opt.kernels.cpp_ops import OPTIMIZER_SOURCE, optimizer_ops_unavailable_reason
from spam_opt.kernels.dispatch import SPAM_KERNELS, STABLE_SPAM_KERNELS, Candidate, KernelTable, select_kernel
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.spam.cpp import spam_cpp
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.spam.reference import spam_reference
from spam_opt.kernels.stable_spam.cpp import stable_spam_cpp
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.triton_steps import triton_unavailable_reason

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
TABLES = [pytest.param(SPAM_KERNELS, spam_cpp, spam_foreach, id="SPAM"),
          pytest.param(STABLE_SPAM_KERNELS, stable_spam_cpp, stable_spam_foreach, id="StableSPAM")]


@pytest.mark.parametrize(("table", "cpp", "foreach"), TABLES)
def test_flags_pick_the_paths_they_name_on_cpu(table, cpp, foreach):
    assert select_kernel(table, None, None, CPU) is cpp  # built once per machine, fast at any size
    assert select_kernel(table, None, True, CPU) is cpp
    assert select_kernel(table, True, None, CPU) is foreach
    assert select_kernel(table, True, False, CPU) is foreach
    assert select_kernel(table, None, False, CPU) is foreach  # fused=False is honoured
    assert select_kernel(table, False, None, CPU) is table.reference
    assert select_kernel(table, False, False, CPU) is table.reference


@pytest.mark.parametrize(("table", "cpp", "foreach"), TABLES)
def test_other_devices_default_to_foreach_and_fused_true_says_why_it_cannot_run(table, cpp, foreach):
    for device in (CUDA, META):
        assert select_kernel(table, None, None, device) is foreach
    with pytest.raises(RuntimeError, match="fused=True cannot run: .*got meta"):
        select_kernel(table, None, True, META)


@pytest.mark.parametrize("table, foreach",
                         [(SPAM_KERNELS, spam_foreach), (STABLE_SPAM_KERNELS, stable_spam_foreach)])
def test_fused_on_cuda_is_the_triton_step_but_never_the_default(table, foreach):
    """Until a fused CUDA step is timed faster on a GPU, CUDA's default is foreach; fused=True asks for the
    Triton step (which hands the layouts it does not take to the compiled one)."""
    (fused,) = [c for c in table.candidates(CUDA) if c.fused]
    assert fused.name == "Triton" and not fused.default
    assert select_kernel(table, None, None, CUDA) is foreach
    reason = fused.unavailable_reason(CUDA)
    if reason is not None:  # no GPU (or no triton) here: fused=True says so, not runs eager
        with pytest.raises(RuntimeError, match=f"fused=True cannot run: {re.escape(reason)}"):
            select_kernel(table, None, True, CUDA)


@pytest.mark.parametrize("capability, hip, needs", [((6, 0), None, "compute capability 7.0 and newer"),
                                                    ((7, 0), None, None), ((9, 0), None, None),
                                                    ((6, 0), "6.2", None)])
def test_the_triton_step_refuses_gpus_triton_does_not_compile_for(capability, hip, needs, monkeypatch):
    """Triton compiles for NVIDIA GPUs of compute capability 7.0 and newer (torch's Inductor checks the same;
    ROCm devices are "cuda" to torch too, and left to Triton): on an older one fused=True says so and what
    the GPU is, rather than failing in Triton's compiler at the first step."""
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    triton_unavailable_reason.cache_clear()
    try:
        reason = triton_unavailable_reason(CUDA)
    finally:
        triton_unavailable_reason.cache_clear()
    if needs is None:
        assert reason is None
    else:
        assert needs in reason and "this one is 6.0" in reason
        with pytest.raises(RuntimeError, match="fused=True cannot run: the Triton step needs a newer GPU"):
            dispatch._fused(SPAM_KERNELS, CUDA)


def test_a_new_kernel_is_one_entry_and_unavailable_ones_are_passed_over_with_their_reason():
    """The automatic choice takes the first default candidate that can run, warns when a preferred one could
    not, skips candidates that are not defaults, and ends at the reference."""
    fast = Candidate("fast", spam_cpp, lambda device: "the fast one needs a widget", fused=True)
    untried = Candidate("untried", spam_compiled, fused=True, default=False)
    broken = Candidate("multi", spam_foreach, lambda device: "no multi-tensor ops")
    table = KernelTable("Toy", {"cpu": (fast, Candidate("multi", spam_foreach))}, other=(untried, broken),
                        reference=spam_reference)
    dispatch.warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="Toy falls back to the slower multi step: the fast one needs a"):
        assert select_kernel(table, None, None, CPU) is spam_foreach
    assert select_kernel(table, None, True, META) is spam_compiled  # fused=True may pick a non-default one
    with pytest.warns(RuntimeWarning, match="single-tensor reference step: no multi-tensor ops"):
        assert select_kernel(table, None, None, META) is spam_reference
    with pytest.raises(RuntimeError, match="fused=True cannot run: the fast one needs a widget"):
        select_kernel(table, None, True, CPU)


@pytest.mark.parametrize("make", [SPAM, StableSPAM], ids=["SPAM", "StableSPAM"])
def test_a_failed_kernel_build_is_reported_and_automatic_selection_falls_back(make, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAM_OPT_CACHE", str(tmp_path))
    monkeypatch.setattr(_cpp_build, "_compiler", lambda: "false")  # a "compiler" that always fails
    reason = _cpp_build.library_unavailable_reason.__wrapped__(OPTIMIZER_SOURCE)
    assert reason.startswith("building the CPU kernel spam_cpu.cpp failed (false, exit 1)")
    assert not list(tmp_path.glob("*.so")), "a failed build must not leave a kernel behind"
    monkeypatch.setattr(dispatch, "optimizer_ops_unavailable_reason", lambda: reason)
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
    target = _cpp_build.cached_library(_cpp_build._compiler(), OPTIMIZER_SOURCE)
    target.write_bytes(b"not a shared library")  # say, a copy truncated by a full disk
    reason = _cpp_build.library_unavailable_reason.__wrapped__(OPTIMIZER_SOURCE)
    assert reason.startswith("loading the CPU kernel") and "delete it to rebuild" in reason


def test_cpp_op_errors_name_the_op_that_failed():
    assert optimizer_ops_unavailable_reason() is None
    p, g = torch.zeros(4, dtype=torch.float64), torch.zeros(4)
    m, n = torch.zeros(4), torch.zeros(())
    with pytest.raises(RuntimeError, match=r"spam_step_: params\[0\] must be a contiguous float32 CPU"):
        torch.ops.spam_opt.spam_step_([p], [g], [m], [m], [n], [None], [None], None,
                                      1e-3, 0.9, 0.999, 1e-8, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"stable_spam_step_: params\[0\] must be a contiguous float32"):
        torch.ops.spam_opt.stable_spam_step_([p], [g], [m], [m], [n], [n], [n], [n], [False], None,
                                             1e-3, 0.9, 0.999, 0.7, 0.9, 0.999, 1e-8, 0.0)
    q8, u8, scale = torch.zeros(4, dtype=torch.int8), torch.zeros(4, dtype=torch.uint8), torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"stable_spam_step8_: the codes of params\[0\] do not match"):
        torch.ops.spam_opt.stable_spam_step8_([g], [g], [q8[:2]], [u8[:2]], [scale], [scale], [n], [n], [n],
                                              [n], [False], [4], None, 1e-3, 0.9, 0.999, 0.7, 0.9, 0.999,
                                              1e-8, 0.0)
