"""CUDA's Triton optimizer steps (``fused=True`` on CUDA): against the float64 references, in Triton's
interpreter on CPU tensors; compiled for Volta, Ampere and Hopper GPUs without a GPU; and the launches a step
makes.

SPAM's Triton step also runs every fused-path test of ``test_spam_paths.py`` (its ``triton`` case). On a
machine with a GPU there is no interpreter (conftest.py), and ``tests/test_cuda.py`` runs the steps there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import benchmark_scripts
import pytest
import test_spam_8bit
import test_stable_spam
import test_stable_spam_8bit
import torch
from stepping import fused_on_cpu

from spam_opt import SPAM, StableSPAM
from spam_opt.kernels.spam import triton_kernel as spam_triton
from spam_opt.kernels.spam.foreach import spam_foreach
from spam_opt.kernels.stable_spam import triton_kernel as stable_triton
from spam_opt.kernels.stable_spam.foreach import stable_spam_foreach
from spam_opt.kernels.triton_steps import MIN_CAPABILITY

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="Triton runs on the GPU on this machine: tests/test_cuda.py covers it")
ROOT = Path(__file__).resolve().parents[1]
TARGETS = (70, 80, 90)  # the GPUs the AOT test compiles for: Volta, Ampere, Hopper
FUSED = dict(fused=True)


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """``fused=True`` picks the Triton steps for CPU tensors (the layouts they do not take: foreach)."""
    for cls, kernel in ((SPAM, spam_triton.spam_triton_with(spam_foreach)),
                        (StableSPAM, stable_triton.stable_spam_triton_with(stable_spam_foreach))):
        monkeypatch.setattr(cls, "kernels", fused_on_cpu(cls.kernels, kernel))


def test_spam_8bit_triton_matches_the_float64_8bit_oracle(triton_on_cpu):
    """8-bit moments, one block per program: dense, and sparse (a block's kept entries, their codes found
    from the bitmap, the others decayed)."""
    for density in (1.0, 0.5):
        test_spam_8bit.test_matches_the_float64_8bit_oracle_over_60_steps(FUSED, density)
    test_spam_8bit.test_the_clip_compares_against_the_dequantized_second_moment(FUSED)
    test_spam_8bit.test_nonfinite_entries_keep_p_and_their_moments_up_to_requantization(FUSED)


def test_spam_8bit_triton_under_a_closed_gate_leaves_codes_scales_and_parameters_bit_identical(triton_on_cpu):
    # rows of 300 entries: a full block of 256 and a masked one of 44
    params = [torch.nn.Parameter(torch.randn(5, 300)), torch.nn.Parameter(torch.randn(7))]
    opt = SPAM(params, lr=1e-2, state_bits=8, clip_delay=0, fused=True)
    for step in range(4):
        for p in params:
            p.grad = torch.randn_like(p)
        before = [p.detach().clone() for p in params], {k: v.clone() for k, v in opt.state[params[0]].items()
                                                            if torch.is_tensor(v)}
        opt.step(gate=torch.tensor(step != 2))
        unchanged = all(torch.equal(a, p) for a, p in zip(before[0], params)) and all(
            torch.equal(v, opt.state[params[0]][k]) for k, v in before[1].items())
        assert unchanged == (step == 2), step
    assert opt.state[params[0]]["exp_avg"].dtype == torch.int8


def test_stable_spam_triton_matches_the_float64_reference(triton_on_cpu):
    test_stable_spam.test_matches_float64_reference_over_120_steps_with_spikes(FUSED)
    test_stable_spam.test_maximize_is_the_float64_rule_on_the_negated_gradient(FUSED)


def test_stable_spam_triton_resets_and_skips_nonfinite_tensors_as_the_reference_does(triton_on_cpu):
    test_stable_spam.test_momentum_reset_zeroes_moments_before_they_are_used(FUSED)
    for bad in (float("nan"), float("inf")):
        test_stable_spam.test_nonfinite_gradient_leaves_that_parameter_and_its_state_untouched(FUSED, bad)
    for bits in (32, 8):
        test_stable_spam.test_a_nonfinite_gradient_at_the_first_step_or_a_reset_leaves_the_parameter_as_it_was(
            FUSED, bits)


def test_stable_spam_8bit_triton_matches_the_float64_8bit_oracle(triton_on_cpu):
    test_stable_spam_8bit.test_matches_the_float64_8bit_oracle_over_60_steps_with_spikes_and_a_reset(FUSED)
    test_stable_spam_8bit.test_a_closed_gate_leaves_codes_scales_and_parameters_bit_identical(FUSED)


LOW_PRECISION_LAYOUTS = [
    pytest.param(SPAM, [dict(), dict(density=0.5), dict(state_bits=8), dict(state_bits=8, density=0.5)],
                 id="SPAM"),
    pytest.param(StableSPAM, [dict(), dict(state_bits=8)], id="StableSPAM")]


def assert_low_precision_steps_round_once_to_nearest_even(cls, dtype, layouts, device):
    """Two steps of bf16 or fp16 parameters through ``fused=True``, against the reference path's (float32
    arithmetic, then ``copy_``, which rounds to nearest even): equal but for the few entries whose float32
    values differ by a rounding right at a boundary, and those by one unit in the last place. Truncating
    instead (what Triton's interpreter does to bfloat16) leaves about two thirds of the entries one unit
    off."""
    for layout in layouts:
        runs = []
        for flags in (FUSED, dict(foreach=False)):
            p = torch.nn.Parameter(torch.randn(40, 300, generator=torch.Generator().manual_seed(0)).to(dtype)
                                   .to(device))
            opt = cls([p], lr=1e-2, weight_decay=0.1, **layout, **flags)
            for step in range(2):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step + 1)).to(dtype) \
                    .to(device)
                opt.step()
            runs.append(p.detach())
        fused, reference = (r.float().cpu() for r in runs)
        assert runs[0].dtype == dtype
        unit = torch.finfo(dtype).eps * reference.abs().clamp(min=torch.finfo(dtype).tiny)
        off = fused != reference
        assert off.float().mean() < 0.01, (layout, off.float().mean())
        assert ((fused - reference).abs() <= unit).all(), layout


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls, layouts", LOW_PRECISION_LAYOUTS)
def test_low_precision_parameters_step_in_float32_and_round_once_to_nearest_even(triton_on_cpu, dtype, cls,
                                                                                 layouts):
    assert_low_precision_steps_round_once_to_nearest_even(cls, dtype, layouts, torch.device("cpu"))


def test_the_kernels_compile_for_volta_ampere_and_hopper_without_a_gpu():
    """What a GPU compiles at the first step, lowered to machine code by Triton's ptxas: a kernel that only
    the interpreter accepts (a type it cannot lower, an op with no GPU form) fails here. Volta (7.0) is the
    oldest GPU the Triton steps accept (``triton_steps.MIN_CAPABILITY``): bfloat16 has no hardware there."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=path)
    assert TARGETS[0] == MIN_CAPABILITY[0] * 10 + MIN_CAPABILITY[1], "compile for the oldest GPU accepted"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_aot.py"), *map(str, TARGETS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    kernels = [f"{k}{v}" for k in ("spam_float32_step", "spam_8bit_step") for v in ("", "[sparse]", "[bf16]")]
    kernels += [f"{k}{v}" for k in ("abs_max", "clipped_square_sum", "update", "update_8bit")
                for v in ("", "[bf16]")]
    assert [line.split(":")[0] for line in lines] == [f"{k} sm_{c}" for k in kernels for c in TARGETS]
    assert all(int(line.split()[2]) > 1000 for line in lines), lines


@pytest.mark.parametrize("label, foreach, per_parameter, fixed", [
    ("SPAM Triton (fused=True)", "SPAM foreach (CUDA default)", 1, 30),
    ("SPAM density 0.25 Triton (fused=True)", "SPAM density 0.25 foreach", 1, 30),
    ("SPAM density 0.25, 8-bit state Triton (fused=True)", "SPAM density 0.25, 8-bit state foreach", 1, 30),
    ("Stable-SPAM Triton (fused=True)", "Stable-SPAM foreach (CUDA default)", 3, 90)])
def test_a_step_launches_a_fixed_number_of_ops_plus_its_kernels_per_parameter(label, foreach, per_parameter,
                                                                            fixed):
    """benchmarks/optimizer_launches.py's count: the foreach step's launches grow with the parameters (about
    20 per parameter for SPAM, 9 for Stable-SPAM); the Triton step makes the same torch ops for 6 parameters
    as for 24 (the whole step, spike statistics and schedule included), plus 1 (SPAM) or 3 (Stable-SPAM)
    kernel launches per parameter."""
    bench = benchmark_scripts.load("optimizer_launches")
    launches, undo = bench.triton_on_this_device(torch.device("cpu"))
    try:
        counts = {(path, n): bench.count_step(bench.PATHS[path][0], [(3 + i, 5) for i in range(n)], launches)
                  for path in (label, foreach) for n in (6, 24)}
    finally:
        undo()
    assert counts[label, 6]["ops"] == counts[label, 24]["ops"] <= fixed, counts
    assert [counts[label, n]["triton"] for n in (6, 24)] == [6 * per_parameter, 24 * per_parameter]
    grown = counts[foreach, 24]["launches"] - counts[foreach, 6]["launches"]
    assert grown >= 18 * 8 and counts[foreach, 24]["triton"] == 0, counts
