"""SPAM with 8-bit moments (``state_bits=8``): the block layout, the maps against float64, the float64
oracles, the C++ kernel against the reference path, the clip on dequantized v, memory, and state dicts.

The torch.optim contract (resume bit for bit, gates, NaN/Inf, dtypes, bad options) runs on the 8-bit settings
through ``optimizer_db``.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from reference_spam import ReferenceSPAM
from stepping import step_and_count
from torch import nn

from spam_opt import SPAM
from spam_opt.kernels.draw import draw_kept_bits
from spam_opt.sparse import kept_indices, mask_key
from spam_opt.state.kept import kept_before, pack_bits, unpack_bits
from spam_opt.state.quantized import QuantizedMoments, block_count, block_ids, block_starts

# Clipping then fires on the injected 1000x spikes only, not at its boundary, where 8-bit and float64 v̂ may
# differ in the last bits and so decide differently.
SCHEDULE = dict(reset_interval=25, warmup_steps=8, clip_delay=5, threshold=5000.0)
# 2-D with rows longer than a block (300 = 256 + 44), 1-D (float32 state), 3-D, 2-D with short rows.
SHAPES = [(6, 300), (7,), (4, 3, 2), (9, 4)]


def _params(shapes, seed=0):
    return [nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(seed + i)))
            for i, s in enumerate(shapes)]


def _stream(shapes, steps, seed=0):
    """Gradients with 1000x single-entry spikes (the clip fires on every path) and NaN/Inf entries."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(steps):
        grads = [torch.randn(s, generator=gen) * (1 + 0.5 * torch.rand(1, generator=gen)) for s in shapes]
        if t % 9 == 8:
            grads[0].view(-1)[(37 * t) % 1800] *= 1000.0
        if t == 40:
            grads[3][2, 1] *= 1000.0
        if t == 13:
            grads[0][2, 250:262] = float("nan")  # across a block boundary
        if t == 30:
            grads[2][1, 1, 0] = float("inf")
        stream.append(grads)
    return stream


def test_blocks_are_row_segments_of_at_most_256_entries():
    ids = block_ids(torch.arange(1200), row_length=600)  # 2 rows of 3 blocks: 256, 256, 88 entries
    expected = torch.cat([torch.full((n,), b) for b, n in enumerate([256, 256, 88] * 2)])
    assert torch.equal(ids, expected) and block_count(1200, 600) == 6
    assert torch.equal(block_ids(torch.arange(12), row_length=4), torch.arange(12) // 4)
    # rows 3-4 of a tensor are blocks 9-14 of it: a shard of whole rows holds whole, single-process blocks
    assert torch.equal(block_ids(torch.arange(1800, 3000), 600), block_ids(torch.arange(1200), 600) + 9)


@pytest.mark.parametrize("numel", [1, 31, 32, 33, 1000])
def test_kept_bits_round_trip_and_the_cpp_draw_matches_the_hash(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    words = pack_bits(mask)
    assert words.dtype == torch.int32 and words.numel() == -(-numel // 32) + 1
    assert torch.equal(unpack_bits(words, numel), mask)
    for offset in (0, 2**32 - 7):
        key = mask_key(4, 1, 2)
        kept = torch.zeros(numel, dtype=torch.bool)
        kept[kept_indices(numel, key, 0.25, offset=offset).long()] = True
        assert torch.equal(draw_kept_bits(numel, key, 0.25, offset=offset), pack_bits(kept))


def _maps_in_float64(m, v, blocks, nblocks, eps):
    """docs/algorithm.md's maps, written independently in float64: codes, scales, dequantized m and v."""
    m, v = m.double(), v.double()
    s = v.sqrt()
    r = m / (s + eps)
    s_scale = torch.zeros(nblocks, dtype=torch.float64).scatter_reduce(0, blocks, s, "amax")
    r_scale = torch.zeros(nblocks, dtype=torch.float64).scatter_reduce(0, blocks, r.abs(), "amax")
    x_s = torch.where(s_scale[blocks] > 0, 255 * (s / s_scale[blocks]).sqrt(), 0.0)
    x_r = torch.where(r_scale[blocks] > 0, r * 127 / r_scale[blocks], 0.0)
    code_s = torch.where(s > 0, x_s.round().clamp(min=1), x_s.round())
    code_r = x_r.round()
    s_hat = code_s**2 * s_scale[blocks] / 255**2
    m_hat = code_r * r_scale[blocks] / 127 * (s_hat + eps)
    return code_r, code_s, r_scale, s_scale, m_hat, s_hat**2, x_r, x_s


def test_maps_match_a_float64_transcription_and_keep_their_error_bound():
    gen = torch.Generator().manual_seed(0)
    numel, row = 40 * 300, 300
    # magnitudes spread over 8 decades within blocks, exact zeros, and one all-zero block
    v = torch.rand(numel, generator=gen) * 10.0 ** torch.randint(-8, 0, (numel,), generator=gen)
    m = torch.randn(numel, generator=gen) * v.sqrt() * 0.5
    v[::97] = 0.0
    m[::97] = 0.0
    v[600:856], m[600:856] = 0.0, 0.0
    blocks = block_ids(torch.arange(numel), row)
    q = QuantizedMoments.zeros(numel, row, None)
    eps = 1e-6
    q.quantize_(m, v, blocks, eps)
    nblocks = q.exp_avg_scale.numel()
    code_r, code_s, r_scale, s_scale, m64, v64, x_r, x_s = _maps_in_float64(m, v, blocks, nblocks, eps)
    torch.testing.assert_close(q.exp_avg_scale.double(), r_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(q.exp_avg_sq_scale.double(), s_scale, rtol=1e-6, atol=0)
    # codes agree except where float32 rounding puts a value within 1e-4 of a rounding tie
    for got, want, x in ((q.exp_avg, code_r, x_r), (q.exp_avg_sq, code_s, x_s)):
        differ = got.double() != want
        assert (differ <= ((x - x.floor() - 0.5).abs() < 1e-4)).all()
        assert (got.double() - want).abs().max() <= 1
    assert (q.exp_avg_sq[v > 0] >= 1).all() and (q.exp_avg_sq[v == 0] == 0).all()
    assert q.exp_avg_scale[4] == q.exp_avg_sq_scale[4] == 0 and (q.exp_avg[600:856] == 0).all()
    m_hat, v_hat = q.dequantize(blocks, eps)
    torch.testing.assert_close(m_hat.double(), m64, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(v_hat.double(), v64, rtol=1e-5, atol=1e-20)
    # the bounds the maps are chosen for: r within half a code step of its block's largest |r|; sqrt(s) within
    # half a step of sqrt(its block's largest s), or (rounded up to code 1) at most one step
    s, r = v.double().sqrt(), m.double() / (v.double().sqrt() + eps)
    r_hat, s_hat = m_hat.double() / (v_hat.double().sqrt() + eps), v_hat.double().sqrt()
    assert ((r_hat - r).abs() <= r_scale[blocks] / 254 * (1 + 1e-4) + 1e-12).all()
    top, err = s_scale[blocks].sqrt(), (s_hat.sqrt() - s.sqrt()).abs()
    floored = q.exp_avg_sq == 1
    assert ((err <= top / 510 * (1 + 1e-4)) | (floored & (err <= top / 255 * (1 + 1e-4)))).all()


def _close_but_for_ties(actual, expected, rtol, atol, lr):
    """Equal within float rounding, but for the few entries whose code took its neighbour at a rounding tie
    (float32 against float64, or against torch's MKL sqrt): one code step of r moves the entry's update by
    at most lr · r_scale / 127, for the ~10 steps β1 = 0.9 remembers it, so lr / 5 with r_scale up to 3."""
    off = (actual - expected).abs() > atol + rtol * expected.abs()
    assert off.float().mean() <= 0.005, f"{int(off.sum())} of {off.numel()} entries differ"
    assert (actual - expected).abs().max() <= lr / 5


def _run(params, opt, stream, ref=None):
    counts = []
    for grads in stream:
        counts.append(step_and_count(opt, params, [g.clone() for g in grads]))
        if ref is not None:
            ref.step(grads)
            assert counts[-1] == (ref.clipped, ref.nonfinite)
    return counts


PATHS = [pytest.param(dict(foreach=False), id="reference"), pytest.param(dict(foreach=True), id="foreach"),
         pytest.param(dict(fused=True), id="fused")]


@pytest.mark.parametrize("flags", PATHS)
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_matches_the_float64_8bit_oracle_over_60_steps(flags, density):
    """Every path against the float64 transcription of the 8-bit rule: equal clip and NaN/Inf counts at every
    step, and parameters equal up to float32 rounding but for a few entries that met a rounding tie."""
    params = _params(SHAPES)
    hyper = dict(lr=1e-2, weight_decay=0.1, density=density, seed=3, **SCHEDULE)
    opt = SPAM(params, state_bits=8, **flags, **hyper)
    ref = ReferenceSPAM([p.detach() for p in params], state_bits=8, **hyper)
    stream = _stream(SHAPES, 60)
    counts = _run(params, opt, stream, ref)
    assert sum(sum(c) for c, _ in counts) >= 4 and sum(sum(f) for _, f in counts) >= 1
    for p, r in zip(params, ref.p):
        _close_but_for_ties(p.detach().double(), r, rtol=0, atol=2e-5, lr=1e-2)
    moved = max((p.detach().double() - q).abs().max().item() for p, q in zip(params, _params(SHAPES)))
    assert moved > 2e-2


def test_stays_within_the_quantization_error_of_the_float32_state_oracle():
    """8-bit against float64 SPAM with full-precision moments: the difference is the quantization's.

    docs/spam.md: the maps put the update direction r within half a code step (1/254 of the block's largest
    |r|, about 0.4%) of the stored one, and benchmarks/state_quantization.py measured a relative error of the
    updates of about 1% in training. Parameters then differ by a few tenths of a percent of the distance they
    travel; a map that lost the moments' small entries (a linear map of v: updates wrong by 3x) or rounded v
    to 0 (updates m / eps) would miss by far more.
    """
    params = _params(SHAPES)
    hyper = dict(lr=1e-2, weight_decay=0.1, **SCHEDULE)
    opt = SPAM(params, state_bits=8, **hyper)
    ref = ReferenceSPAM([p.detach() for p in params], **hyper)
    init = [p.detach().double().clone() for p in params]
    for grads in _stream(SHAPES, 60, seed=5):
        step_and_count(opt, params, [g.clone() for g in grads])
        ref.step(grads)
    for p, r, p0 in zip(params, ref.p, init):
        travelled = (r - p0).abs().max().item()
        assert (p.detach().double() - r).abs().max().item() <= 0.02 * travelled


@pytest.mark.parametrize(("density", "weight_decay"), [(1.0, 0.1), (0.25, 0.1), (0.25, 0.0)])
def test_cpp_kernel_matches_the_reference_path_on_large_tensors(density, weight_decay, torch_threads):
    """Many blocks split over threads, rows of 3 blocks, a short-row matrix. The torch path's sqrt (MKL) may
    differ from the C++ one in the last bit, so codes may differ at rounding ties: by one step, rarely."""
    shapes = [(300, 600), (4000, 7), (70001,)]
    runs = []
    for flags in (dict(fused=True), dict(foreach=False)):
        params = _params(shapes, seed=3)
        opt = SPAM(params, lr=1e-2, weight_decay=weight_decay, density=density, state_bits=8,
                   reset_interval=8, warmup_steps=3, clip_delay=2, **flags)
        gen = torch.Generator().manual_seed(7)
        counts = []
        for t in range(12):
            grads = [torch.randn(s, generator=gen) for s in shapes]
            grads[t % 2].view(-1)[(t * 7919) % 1000::997] *= 1000.0
            if t == 9:
                grads[0].view(-1)[40_003:40_100:7] = float("nan")
            counts.append(step_and_count(opt, params, grads))
        runs.append((params, opt, counts))
    (fast, fast_opt, fast_counts), (slow, slow_opt, slow_counts) = runs
    assert fast_counts == slow_counts and sum(c for step, _ in slow_counts for c in step) > 50
    assert slow_counts[9][1][0] == 1
    for a, b in zip(fast, slow):
        _close_but_for_ties(a.detach(), b.detach(), rtol=1e-5, atol=1e-6, lr=1e-2)
    for a, b in zip(fast[:2], slow[:2]):
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = fast_opt.state[a][key].int(), slow_opt.state[b][key].int()
            assert (x - y).abs().max() <= 1 and (x != y).float().mean() < 1e-3, key


def _moments(opt, p, row_length):
    """A copy of ``p``'s 8-bit moments (dense)."""
    keys = ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale")
    return QuantizedMoments(*(opt.state[p][k].clone() for k in keys), row_length, None)


def _codes_agree(a, b):
    """Codes equal but for values at a rounding tie (float32 paths), which take a neighbouring code."""
    for x, y in ((a.exp_avg, b.exp_avg), (a.exp_avg_sq, b.exp_avg_sq)):
        differ = x.int() != y.int()
        assert (x.int() - y.int()).abs().max() <= 1 and differ.float().mean() < 0.01


@pytest.mark.parametrize("flags", PATHS)
def test_the_clip_compares_against_the_dequantized_second_moment(flags):
    """g² > θ·v̂ decides a spike, and it is clipped to sqrt(θ·v̂): v̂ is what the state holds."""
    p = nn.Parameter(torch.zeros(8, 64))
    opt = SPAM([p], lr=1e-3, state_bits=8, clip_delay=3, reset_interval=0, threshold=20.0, **flags)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        p.grad = torch.randn(8, 64, generator=gen)
        opt.step()
    blocks = block_ids(torch.arange(512), 64)
    m_hat, v_hat = _moments(opt, p, 64).dequantize(blocks, 1e-6)
    g = torch.randn(512, generator=gen)
    g[[5, 77, 300]] = torch.tensor([40.0, -60.0, 3.0]) * v_hat[[5, 77, 300]].sqrt()
    p.grad = g.view(8, 64).clone()
    opt.step()
    spikes = g**2 > 20.0 * v_hat
    assert spikes[[5, 77]].all() and not spikes[300]
    assert opt.spike_stats().clipped.item() == int(spikes.sum())
    clipped = torch.where(spikes, g.sign() * (20.0 * v_hat).sqrt(), g)
    expected = QuantizedMoments.zeros(512, 64, None)
    expected.quantize_(0.9 * m_hat + 0.1 * clipped, 0.999 * v_hat + 0.001 * clipped**2, blocks, 1e-6)
    got = _moments(opt, p, 64)
    _codes_agree(got, expected)
    torch.testing.assert_close(got.exp_avg_sq_scale, expected.exp_avg_sq_scale, rtol=1e-5, atol=0)


@pytest.mark.parametrize("flags", PATHS)
def test_nonfinite_entries_keep_p_and_their_moments_up_to_requantization(flags):
    p = nn.Parameter(torch.randn(4, 64))
    opt = SPAM([p], lr=1e-2, weight_decay=0.1, state_bits=8, clip_delay=0, **flags)
    for _ in range(3):
        p.grad = torch.randn(4, 64)
        opt.step()
    codes = lambda q: (q.exp_avg.float() * q.exp_avg_scale.repeat_interleave(64) / 127,  # r̂, sqrt(ŝ)
                       q.exp_avg_sq.float() * (q.exp_avg_sq_scale.repeat_interleave(64) / 255**2).sqrt())
    r_before, root_before = codes(_moments(opt, p, 64))
    p_before = p.detach().clone()
    p.grad = torch.randn(4, 64)
    p.grad[1, 7], p.grad[3, 0] = float("nan"), float("inf")
    opt.step()
    after = _moments(opt, p, 64)
    r_after, root_after = codes(after)
    frozen = torch.zeros(4, 64, dtype=torch.bool)
    frozen[1, 7] = frozen[3, 0] = True
    assert torch.equal(p[frozen], p_before[frozen]) and (p != p_before)[~frozen].all()
    # a skipped entry keeps r̂ and ŝ but for the rounding to its block's new scales (half a code step)
    flat = frozen.view(-1)
    half_r = after.exp_avg_scale.repeat_interleave(64) / 254
    half_root = after.exp_avg_sq_scale.repeat_interleave(64).sqrt() / 510
    assert ((r_after - r_before)[flat].abs() <= half_r[flat] * 1.001).all()
    assert ((root_after - root_before)[flat].abs() <= half_root[flat] * 1.001).all()
    assert opt.spike_stats().nonfinite.tolist() == [1]


def _state_bytes(opt):
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)


def test_state_memory_against_adamw():
    """Measured from the state tensors on LLaMA-20M-like block shapes (a norm included): 8-bit dense keeps at
    most 0.27x AdamW's bytes, 8-bit at density 0.25 at most 0.10x."""
    shapes = [(256, 256), (688, 256), (256, 688), (256,)]

    def measured(make):
        params = _params(shapes)
        opt = make(params)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        return _state_bytes(opt)

    adamw = measured(lambda ps: torch.optim.AdamW(ps))
    dense = measured(lambda ps: SPAM(ps, state_bits=8))
    sparse = measured(lambda ps: SPAM(ps, state_bits=8, density=0.25))
    assert dense <= 0.27 * adamw and sparse <= 0.10 * adamw, (dense / adamw, sparse / adamw)
    numel = sum(math.prod(s) for s in shapes)
    # the documented layout: 2 bytes + 8 per block; at d = 0.25, 2·d + 1/8 + 8 per block (+ the norm's 8)
    blocks = 256 + 688 * 1 + 256 * 3
    assert dense == 2 * (numel - 256) + 8 * blocks + 8 * 256


def test_state_bits_must_match_a_loaded_state_dict():
    p = nn.Parameter(torch.randn(8, 8))
    saved = {}
    for bits in (32, 8):
        opt = SPAM([p], state_bits=bits)
        p.grad = torch.randn(8, 8)
        opt.step()
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        saved[bits] = torch.load(buffer, weights_only=True)
    with pytest.raises(ValueError, match="saved with state_bits=32.*this SPAM has state_bits=8"):
        SPAM([p], state_bits=8).load_state_dict(saved[32])
    with pytest.raises(ValueError, match="saved with state_bits=8.*build the optimizer with state_bits=8"):
        SPAM([p]).load_state_dict(saved[8])
    older = {**saved[32], "param_groups": [{k: v for k, v in g.items() if k != "state_bits"}
                                           for g in saved[32]["param_groups"]]}
    opt = SPAM([p])  # a state dict from before state_bits existed loads as float32 state
    opt.load_state_dict(older)
    assert opt.param_groups[0]["state_bits"] == 32
    mangled = {**saved[8], "state": {0: {**saved[8]["state"][0], "exp_avg": torch.zeros(64)}}}
    with pytest.raises(ValueError, match="corrupt SPAM state for parameter 0: state_bits=8"):
        SPAM([p], state_bits=8).load_state_dict(mangled)


def test_state_bits_cannot_change_during_a_run():
    p = nn.Parameter(torch.randn(8, 8))
    opt = SPAM([p], state_bits=8)
    p.grad = torch.randn(8, 8)
    opt.step()
    opt.param_groups[0]["state_bits"] = 32
    with pytest.raises(ValueError, match="parameter 0 holds 8-bit moments.*state_bits=32"):
        opt.step()


def test_only_parameters_of_two_or_more_dimensions_are_quantized():
    params = _params([(4, 8), (8,), ()])
    opt = SPAM([{"params": params[:2], "state_bits": 8}, {"params": params[2:]}])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    dtypes = [opt.state[p]["exp_avg"].dtype for p in params]
    assert dtypes == [torch.int8, torch.float32, torch.float32]


@pytest.mark.parametrize("rows, row_length", [(5, 300), (3, 256), (4, 40)])
def test_block_starts_count_the_kept_entries_before_each_block(rows, row_length):
    """Where each block's codes start under sparse momentum (the Triton step's ``starts``): the number of
    kept entries, counted one by one from the kept flat indices, whose block comes before it."""
    numel = rows * row_length
    kept = torch.rand(numel, generator=torch.Generator().manual_seed(rows)) < 0.3
    blocks = block_ids(kept.nonzero().squeeze(1), row_length).tolist()
    expected = [sum(b < block for b in blocks) for block in range(block_count(numel, row_length))]
    assert block_starts(pack_bits(kept), numel, row_length).tolist() == expected


@pytest.mark.parametrize("numel, span", [(3000, 1024), (2048, 1024), (100, 64)])
def test_kept_before_counts_the_kept_entries_before_each_span(numel, span):
    """Where each span's kept entries start in state stored in flat order (the float32 Triton step's
    ``starts``), against a count one by one."""
    kept = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    indices = kept.nonzero().squeeze(1).tolist()
    expected = [sum(i < start for i in indices) for start in range(0, numel, span)]
    assert kept_before(pack_bits(kept), numel, span).tolist() == expected
