"""StableSPAM with 8-bit moments (``state_bits=8``): every path against a float64 transcription of the rule
whose moments go through the 8-bit maps after each step, the distance to float32 state, the gate, NaN/Inf,
and memory. The torch.optim contract (exact resume, groups, bad options) runs on it through
``optimizer_db``."""

from __future__ import annotations

import pytest
import torch
from stepping import grad_stream, step_and_count
from test_spam_8bit import SHAPES, _close_but_for_ties, _maps_in_float64, _params
from test_stable_spam import HYPER, Float64StableSPAM

from spam_opt.stable_spam import StableSPAM
from spam_opt.state.quantized import block_count, block_ids
from spam_opt.state_bytes import state_bytes

PATHS = [pytest.param(dict(foreach=False), id="reference"), pytest.param(dict(foreach=True), id="foreach"),
         pytest.param(dict(fused=True), id="fused")]
# not right after the reset at step 40: AdaClip's bias correction restarts with the count, so it waits
SPIKES = ((20, 0, 3), (33, 3, 7), (34, 0, 0), (55, 2, 1))


class Float64StableSPAM8bit(Float64StableSPAM):
    """The float64 rule, with the moments of 2-D+ parameters replaced after every step by what the 8-bit
    maps (written independently in float64 in test_spam_8bit) give back."""

    def step(self, grads):
        super().step(grads)
        for p, st in zip(self.p, self.state):
            if p.dim() >= 2:
                numel, row = p.numel(), p.shape[-1]
                blocks, count = block_ids(torch.arange(numel), row), block_count(numel, row)
                *_, m_hat, v_hat, _, _ = _maps_in_float64(st["m"].reshape(-1), st["v"].reshape(-1), blocks,
                                                          count, self.eps)
                st["m"], st["v"] = m_hat.view_as(p), v_hat.view_as(p)


@pytest.mark.parametrize("flags", PATHS)
def test_matches_the_float64_8bit_oracle_over_60_steps_with_spikes_and_a_reset(flags):
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, **flags, **HYPER)
    ref = Float64StableSPAM8bit([p.detach() for p in params], **HYPER)
    scaled = 0
    for t, grads in enumerate(grad_stream(SHAPES, 60, spikes=SPIKES), start=1):
        clipped, _ = step_and_count(opt, params, [g.clone() for g in grads])
        ref.step(grads)
        # float32 and float64 may disagree on an entry within rounding of the AdaClip bound; spikes may not.
        assert max(abs(a - b) for a, b in zip(clipped, ref.clipped)) <= 1, t
        scaled += t in {s for s, _, _ in SPIKES} and sum(ref.clipped) > 0
    assert scaled == 4, "every injected spike must be scaled by AdaClip"
    assert opt.state[params[0]]["exp_avg"].dtype == torch.int8 and opt.state[params[1]]["exp_avg"].dtype == \
        torch.float32
    for p, r in zip(params, ref.p):
        _close_but_for_ties(p.detach().double(), r, rtol=0, atol=2e-5, lr=HYPER["lr"])


def test_stays_within_the_quantization_error_of_float32_state():
    """8-bit against the float64 rule with full-precision moments: the parameters differ by a few tenths of
    a percent of the distance they travel (the maps keep the update direction within half a code step)."""
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, **HYPER)
    ref = Float64StableSPAM([p.detach() for p in params], **HYPER)
    init = [p.detach().double().clone() for p in params]
    for grads in grad_stream(SHAPES, 60, spikes=SPIKES, seed=5):
        step_and_count(opt, params, [g.clone() for g in grads])
        ref.step(grads)
    for p, r, p0 in zip(params, ref.p, init):
        travelled = (r - p0).abs().max().item()
        assert travelled > 0.05
        assert (p.detach().double() - r).abs().max().item() <= 0.02 * travelled


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], [{k: v.clone() for k, v in opt.state[p].items()
                                                   if torch.is_tensor(v)} for p in params]


@pytest.mark.parametrize("flags", PATHS)
def test_a_closed_gate_leaves_codes_scales_and_parameters_bit_identical(flags):
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, **flags, **HYPER)
    stream = grad_stream(SHAPES, 6, spikes=())
    for grads in stream[:5]:
        step_and_count(opt, params, grads)
    before = _snapshot(opt, params)
    for p, g in zip(params, stream[5]):
        p.grad = g
    opt.step(gate=torch.tensor(False))
    after = _snapshot(opt, params)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    for b, a in zip(before[1], after[1]):
        assert all(torch.equal(b[k], a[k]) for k in b)


@pytest.mark.parametrize("flags", PATHS)
def test_a_nonfinite_gradient_skips_its_tensor_and_keeps_its_moments(flags):
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, **flags, **HYPER)
    for grads in grad_stream(SHAPES, 5, spikes=()):
        step_and_count(opt, params, grads)
    (p_before, s_before) = _snapshot(opt, params)
    grads = grad_stream(SHAPES, 1, spikes=(), seed=9)[0]
    grads[0][2, 7] = float("nan")
    _, nonfinite = step_and_count(opt, params, grads)
    p_after, s_after = _snapshot(opt, params)
    assert nonfinite == [True, False, False, False]
    assert torch.equal(p_after[0], p_before[0]) and not torch.equal(p_after[1], p_before[1])
    # the skipped tensor's moments are requantized from their own dequantized values: the same codes
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale", "step"):
        torch.testing.assert_close(s_after[0][key], s_before[0][key], rtol=1e-6, atol=0)


def test_state_memory_is_a_quarter_of_float32_state():
    """LLaMA-20M-like block shapes and a norm: 2 bytes per entry and 8 per block of 256, against 8."""
    shapes = [(256, 256), (688, 256), (256, 688), (256,)]

    def measured(**kw):
        params = _params(shapes)
        opt = StableSPAM(params, **kw)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        return state_bytes(opt)

    matrices = 256 * 256 + 2 * 688 * 256
    blocks = 256 + 688 + 256 * 3
    assert measured() == 8 * (matrices + 256)
    assert measured(state_bits=8) == 2 * matrices + 8 * blocks + 8 * 256
    assert measured(state_bits=8) <= 0.26 * measured()


def test_the_fused_path_steps_8bit_moments_in_the_cpp_op():
    """On CPU the fused path takes 8-bit moments in one C++ op, not via float32 copies and torch passes."""
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, fused=True, **HYPER)
    for p, g in zip(params, grad_stream(SHAPES, 1, spikes=())[0]):
        p.grad = g
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert "spam_opt::stable_spam_step8_" in names and "spam_opt::stable_spam_step_" in names
    assert not any("dequant" in n or n == "aten::index_select" for n in names)


@pytest.mark.parametrize("flags", PATHS)
def test_a_reset_under_a_closed_gate_zeroes_codes_and_scales(flags):
    """As with float32 state, a reset due on a skipped step still happens (docs/algorithm.md)."""
    params = _params(SHAPES)
    opt = StableSPAM(params, state_bits=8, **flags, **{**HYPER, "reset_interval": 3})
    for t, grads in enumerate(grad_stream(SHAPES, 3, spikes=())):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step(gate=torch.tensor(t < 2))
    st = opt.state[params[0]]
    assert st["exp_avg"].dtype == torch.int8 and st["step"].item() == 0
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"):
        assert not st[key].any(), key
