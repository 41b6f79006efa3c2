"""The compiled steps (CUDA's ``fused=True``) of every optimizer variant, run on CPU through Inductor's C++
code against the float64 references, and the number of graphs they compile.

The compiled step is picked for CPU tensors by swapping it into the optimizer's fused slot; the oracle tests
of each variant are then run on it as they are on the other paths. Compiles are slow on a small CPU, so the
shapes are few and small, and each graph is compiled once per test process (the kinds and chunk lengths
repeat across tests).
"""

from __future__ import annotations

import pytest
import test_spam_8bit
import test_stable_spam
import test_stable_spam_8bit
import torch
from stepping import fused_on_cpu
from torch import nn

from spam_opt import SPAM, StableSPAM
from spam_opt.kernels import compiled_lists
from spam_opt.kernels.spam.compiled import spam_compiled
from spam_opt.kernels.stable_spam.compiled import stable_spam_compiled

FUSED = dict(fused=True)


@pytest.fixture(autouse=True)
def compiled_on_cpu(monkeypatch):
    """``fused=True`` picks the compiled steps for CPU tensors."""
    for cls, kernel in ((SPAM, spam_compiled), (StableSPAM, stable_spam_compiled)):
        monkeypatch.setattr(cls, "kernels", fused_on_cpu(cls.kernels, kernel))


def test_spam_8bit_compiled_matches_the_float64_8bit_oracle():
    # Sparse: its 2-D parameters take the sparse 8-bit layout, its 1-D one float32 moments (the dense
    # 8-bit layout is the same graph code with no indices).
    test_spam_8bit.test_matches_the_float64_8bit_oracle_over_60_steps(FUSED, 0.5)


def test_stable_spam_compiled_matches_the_float64_reference():
    test_stable_spam.test_matches_float64_reference_over_120_steps_with_spikes(FUSED)


def test_stable_spam_compiled_resets_and_skips_nonfinite_tensors_as_the_reference_does():
    test_stable_spam.test_momentum_reset_zeroes_moments_before_they_are_used(FUSED)
    nan = float("nan")
    test_stable_spam.test_nonfinite_gradient_leaves_that_parameter_and_its_state_untouched(FUSED, nan)


def test_stable_spam_8bit_compiled_matches_the_float64_8bit_oracle():
    test_stable_spam_8bit.test_matches_the_float64_8bit_oracle_over_60_steps_with_spikes_and_a_reset(FUSED)
    test_stable_spam_8bit.test_a_closed_gate_leaves_codes_scales_and_parameters_bit_identical(FUSED)


def test_graphs_are_shared_per_kind_and_chunk_not_per_parameter(monkeypatch):
    """5 sparse matrices of different sizes in chunks of 2 take 2 graphs (a full chunk and the rest), and no
    more as resets change their kept counts and the schedule changes the scalars."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled_lists, "CHUNK", 2)
    torch._dynamo.reset()  # graphs compiled by earlier tests of this process would be reused, not counted
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(3 + i, 4 + i % 2, generator=gen)) for i in range(5)]
    opt = SPAM(params, fused=True, density=0.5, reset_interval=2, warmup_steps=1, clip_delay=0)
    before = counters["stats"]["unique_graphs"]
    for _ in range(5):  # two resets
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    assert counters["stats"]["unique_graphs"] - before == 2


@pytest.mark.parametrize("name, layers, dense, sparse", [("llama-130m", 12, 2, 3), ("llama-1b", 24, 2, 4)])
def test_graphs_a_llama_model_needs(name, layers, dense, sparse):
    """docs/spam.md's count: float32 dense moments make one kind of every tensor (flat views); sparse momentum
    or 8-bit state makes the matrices a second kind."""
    from trainers.models import build_model

    with torch.device("meta"):
        model = build_model(name, vocab_size=32000, seq_len=256)
    params = list(model.parameters())
    assert sum(p.dim() == 2 for p in params) == 7 * layers + 2 and len(params) == 9 * layers + 3
    assert compiled_lists.graphs_needed([(p.dtype, False) for p in params]) == dense
    assert compiled_lists.graphs_needed([(p.dtype, p.dim() >= 2) for p in params]) == sparse
