"""CUDA's Triton optimizer steps (``fused=True`` on CUDA): against the float64 references, in Triton's
interpreter on CPU tensors; compiled for Ampere and Hopper GPUs without a GPU; and the launches a step makes.

SPAM's Triton step also runs every fused-path test of ``test_spam_paths.py`` (its ``triton`` case). On a
machine with a GPU there is no interpreter (conftest.py), and ``tests/test_cuda.py`` runs the steps there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_stable_spam
import torch
from stepping import fused_on_cpu
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from spam_opt import SPAM, StableSPAM
from spam_opt.kernels.spam import triton_kernel as spam_triton
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.stable_spam import triton_kernel as stable_triton
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="Triton runs on the GPU on this machine: tests/test_cuda.py covers it")
ROOT = Path(__file__).resolve().parents[1]
FUSED = dict(fused=True)


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """``fused=True`` picks the Triton steps for CPU tensors (the layouts they do not take: foreach)."""
    for cls, kernel in ((SPAM, spam_triton.spam_triton_with(spam_foreach)),
                        (StableSPAM, stable_triton.stable_spam_triton_with(stable_spam_foreach))):
        monkeypatch.setattr(cls, "kernels", fused_on_cpu(cls.kernels, kernel))


def test_stable_spam_triton_matches_the_float64_reference(triton_on_cpu):
    test_stable_spam.test_matches_float64_reference_over_120_steps_with_spikes(FUSED)
    test_stable_spam.test_maximize_is_the_float64_rule_on_the_negated_gradient(FUSED)


def test_stable_spam_triton_resets_and_skips_nonfinite_tensors_as_the_reference_does(triton_on_cpu):
    test_stable_spam.test_momentum_reset_zeroes_moments_before_they_are_used(FUSED)
    for bad in (float("nan"), float("inf")):
        test_stable_spam.test_nonfinite_gradient_leaves_that_parameter_and_its_state_untouched(FUSED, bad)


def test_the_kernels_compile_for_ampere_and_hopper_without_a_gpu():
    """What a GPU compiles at the first step, lowered to machine code by Triton's ptxas: a kernel that only
    the interpreter accepts (a type it cannot lower, an op with no GPU form) fails here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_aot.py"), "80", "90"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    kernels = ("spam_dense_step", "abs_max", "clipped_square_sum", "update")
    assert [line.split(":")[0] for line in lines] == [f"{k} sm_{c}" for k in kernels for c in (80, 90)]
    assert all(int(line.split()[2]) > 1000 for line in lines), lines


class _AtenOps(TorchDispatchMode):
    """Counts the aten ops (views aside) dispatched while active: each is a kernel launch on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


class _Launches:
    """A Triton kernel that counts its launches, and runs them outside the op counter (the interpreter's
    own copies between torch and numpy are no launches on a GPU)."""

    def __init__(self, kernel) -> None:
        self.kernel, self.count = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.count += 1
            with _disable_current_modes():
                return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("optimizer", ["SPAM", "StableSPAM"])
def test_a_step_launches_a_fixed_number_of_ops_plus_its_kernels_per_parameter(optimizer, triton_on_cpu,
                                                                            monkeypatch):
    """The foreach step's ops grow with the parameters (about 20 per parameter for SPAM, 9 for Stable-SPAM);
    the Triton step makes the same torch ops for 6 parameters as for 24 (the whole step, spike statistics and
    schedule included: under 30 for SPAM, 90 for Stable-SPAM), plus 1 (SPAM) or 3 (Stable-SPAM) launches
    per parameter."""
    if optimizer == "SPAM":
        kernels = [_Launches(spam_triton._kernel())]
        monkeypatch.setattr(spam_triton, "_kernel", lambda: kernels[0])
        make, per_parameter, fixed = (lambda ps: SPAM(ps, fused=True, clip_delay=0)), 1, 30
    else:
        kernels = [_Launches(k) for k in stable_triton._kernels()]
        monkeypatch.setattr(stable_triton, "_kernels", lambda: tuple(kernels))
        make, per_parameter, fixed = (lambda ps: StableSPAM(ps, fused=True)), 3, 90
    ops = {}
    for n in (6, 24):
        params = [nn.Parameter(torch.randn(3 + i, 5)) for i in range(n)]
        opt = make(params)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            before = sum(k.count for k in kernels)
            with _AtenOps() as counter:
                opt.step()
        ops[n] = counter.ops
        assert sum(k.count for k in kernels) - before == per_parameter * n
    assert ops[6] == ops[24], ops
    assert ops[24] <= fixed, ops
