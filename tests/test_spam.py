"""SPAM against a float64 transcription of the design's rule, plus the torch.optim contract."""

from __future__ import annotations

import functools

import pytest
import torch
from reference_spam import ReferenceSPAM
from stepping import grad_stream
from torch import nn

from spam_opt import SPAM, param_groups
from spam_opt.kernels.draw import draw_kept
from spam_opt.kernels.spam.cpp import _kept_bits
from spam_opt.sparse import kept_indices, mask_key
from spam_opt.state import kept as kept_module
from spam_opt.state.kept import KeptEntries, pack_bits, per_draw, unpack_bits

SCHEDULE = dict(reset_interval=25, warmup_steps=8, clip_delay=5, threshold=50.0)
PATHS = [pytest.param(False, id="reference"), pytest.param(True, id="foreach")]
# foreach=None: the default, the C++ kernel on CPU
ALL_PATHS = [*PATHS, pytest.param(None, id="fused")]


def _shapes():
    return [(6, 5), (7,), (4, 3, 2), (9, 4)]


# gradient spikes (step, parameter, flat index) and NaN/Inf runs (step, parameter, flat index, value)
_grad_stream = functools.partial(
    grad_stream, spikes=((30, 0, 3), (61, 3, 7), (62, 0, 0), (90, 2, 1)),
    nonfinite=((44, 0, 10, float("nan")), (45, 0, 11, float("inf")), (71, 3, 2, -float("inf"))))


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_matches_float64_reference_over_120_steps(foreach, density):
    shapes = _shapes()
    init = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    params = [nn.Parameter(t.clone()) for t in init]
    hyper = dict(lr=1e-2, weight_decay=0.1, density=density, seed=3, **SCHEDULE)
    opt = SPAM(params, foreach=foreach, **hyper)
    ref = ReferenceSPAM(init, **hyper)
    stream = _grad_stream(shapes, 120)
    total_clipped = skipped = 0
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        stats = opt.spike_stats()
        assert stats.clipped.tolist() == ref.clipped
        assert stats.nonfinite.tolist() == ref.nonfinite
        total_clipped += sum(ref.clipped)
        skipped += sum(ref.nonfinite)
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().double(), r, rtol=2e-5, atol=2e-6)
    assert total_clipped >= 4, "the stream must exercise the clip"
    assert skipped >= 2, "the stream must exercise the NaN/Inf skip"


def test_clip_bounds_the_move_of_a_spiked_entry():
    """A 1000x spike on one entry moves it by at most what the clipped gradient allows, unlike plain Adam."""
    torch.manual_seed(0)
    moves, v_ratio = {}, {}
    for threshold in (5000.0, 0.0):
        p = nn.Parameter(torch.zeros(50))
        opt = SPAM([p], lr=1e-3, threshold=threshold, reset_interval=0, clip_delay=10)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            p.grad = torch.randn(50, generator=gen) * 0.01
            opt.step()
        state = opt.state[p]
        m_old, v_old, n = state["exp_avg"][7].item(), state["exp_avg_sq"][7].item(), state["step"].item() + 1
        before = p.detach().clone()
        p.grad = torch.randn(50, generator=gen) * 0.01
        p.grad[7] = 1000.0 * p.grad.abs().max()
        opt.step()
        moves[threshold] = (p.detach() - before)[7].abs().item()
        v_ratio[threshold] = state["exp_avg_sq"][7].item() / v_old
        if threshold:
            assert opt.spike_stats().clipped.tolist() == [1]
            b1, b2 = 0.9, 0.999
            g_c = (threshold * v_old) ** 0.5  # the clipped magnitude
            m_new = abs(b1 * m_old) + (1 - b1) * g_c
            v_new = b2 * v_old + (1 - b2) * g_c**2
            bound = 1e-3 * (1 - b2**n) ** 0.5 / (1 - b1**n) * m_new / (v_new**0.5 + 1e-6)
            assert moves[threshold] <= bound * (1 + 1e-5)
    # Without the clip the spike inflates v by ~1000x and so mutes this entry for thousands of steps.
    assert v_ratio[5000.0] < 10 and v_ratio[0.0] > 1000, v_ratio


@pytest.mark.parametrize("foreach", PATHS)
def test_zero_second_moment_entries_are_not_frozen(foreach):
    """An entry whose gradient was 0 through the clip delay must move on its first non-zero gradient."""
    p = nn.Parameter(torch.zeros(4, 3))
    opt = SPAM([p], lr=1e-2, clip_delay=2, reset_interval=0, foreach=foreach)
    for _ in range(5):
        g = torch.ones(4, 3)
        g[2] = 0.0  # an unseen embedding row
        p.grad = g
        opt.step()
    p.grad = torch.ones(4, 3)
    before = p.detach().clone()
    opt.step()
    assert (p.detach()[2] - before[2]).abs().min() > 1e-3
    assert opt.spike_stats().clipped.item() == 0


@pytest.mark.parametrize("foreach", PATHS)
def test_never_writes_grad_and_spikes_are_counted(foreach):
    p = nn.Parameter(torch.zeros(10, 10))
    opt = SPAM([p], lr=1e-3, clip_delay=2, reset_interval=0, foreach=foreach)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        p.grad = torch.randn(10, 10, generator=gen)
        opt.step()
    g = torch.randn(10, 10, generator=gen)
    g[1, 2] = 1e6
    g[4, 4] = -1e6
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    stats = opt.spike_stats()
    assert stats.clipped.tolist() == [2] and stats.nonfinite.tolist() == [0]
    assert stats.params[0] is p and stats.step == 101


@pytest.mark.parametrize("foreach", ALL_PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_entries_keep_their_values_and_the_rest_moves(foreach, bad):
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(6))
    opt = SPAM([a, b], lr=1e-2, weight_decay=0.1, clip_delay=0, foreach=foreach)
    for _ in range(3):
        a.grad, b.grad = torch.randn(4, 4), torch.randn(6)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[a].items() if torch.is_tensor(v)}
    a_before, b_before = a.detach().clone(), b.detach().clone()
    a.grad = torch.randn(4, 4)
    a.grad[2, 1] = bad
    a.grad[0, 3] = -bad
    b.grad = torch.randn(6)
    opt.step()
    frozen = torch.zeros(4, 4, dtype=torch.bool)
    frozen[2, 1] = frozen[0, 3] = True
    assert torch.equal(a[frozen], a_before[frozen])
    assert (a != a_before)[~frozen].all() and (b != b_before).all()
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[a][key][frozen], before[key][frozen]), key
        assert (opt.state[a][key] != before[key])[~frozen].all(), key
    assert opt.spike_stats().nonfinite.tolist() == [1, 0]
    for t in (a, b, *opt.state[a].values(), *opt.state[b].values()):
        if torch.is_tensor(t) and t.is_floating_point():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("foreach", ALL_PATHS)
def test_under_sparse_momentum_only_kept_entries_read_their_gradient(foreach):
    """A kept entry with a NaN gradient keeps its value; a left-out one gets the weight decay as always."""
    p = nn.Parameter(torch.randn(16, 16))
    opt = SPAM([p], lr=1e-2, weight_decay=0.1, density=0.5, foreach=foreach)
    p.grad = torch.randn(16, 16)
    opt.step()
    kept = torch.zeros(256, dtype=torch.bool)
    kept[KeptEntries(opt.state[p]["kept_low"], opt.state[p]["kept_starts"]).indices()] = True
    before = p.detach().clone().view(-1)
    p.grad = torch.full((16, 16), float("nan"))
    opt.step()
    after = p.detach().view(-1)
    assert torch.equal(after[kept], before[kept])
    torch.testing.assert_close(after[~kept], before[~kept] * (1 - 1e-2 * 0.1), rtol=0, atol=0)
    assert opt.spike_stats().nonfinite.tolist() == [1]


def test_maximize_equals_minimizing_the_negation():
    init = torch.randn(6, 4)
    a, b = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    opt_a, opt_b = SPAM([a], lr=1e-2, maximize=True), SPAM([b], lr=1e-2)
    for _ in range(10):
        g = torch.randn(6, 4)
        a.grad, b.grad = g.clone(), -g
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_sparse_state_memory_scales_with_density():
    def state_bytes(density):
        p = nn.Parameter(torch.randn(256, 256))
        opt = SPAM([p], density=density)
        p.grad = torch.randn(256, 256)
        opt.step()
        return sum(t.numel() * t.element_size() for t in opt.state[p].values() if torch.is_tensor(t))

    dense, sparse = state_bytes(1.0), state_bytes(0.25)
    # m and v at 0.25x, plus two bytes of index per kept entry (0.0625x) and a few block counts
    assert sparse <= 0.33 * dense, (sparse, dense)


@pytest.mark.parametrize(("numel", "density", "offset"),
                         [(300_000, 0.25, 0), (400_000, 1e-5, 7), (70_000, 1.0, 2**32 - 5), (5, 0.5, 123)])
def test_cpp_draw_matches_the_torch_draw(numel, density, offset):
    """The C++ draw against the torch transcription of the hash, including offsets past 2**32."""
    key = mask_key(5, 2, 3)
    fast = draw_kept(numel, key, density, offset=offset)
    assert torch.equal(fast.indices(), kept_indices(numel, key, density, offset=offset).long())
    assert torch.equal(fast.starts, KeptEntries.from_indices(fast.indices(), numel).starts)


def test_kept_entries_round_trip_through_the_compact_layout():
    for numel, density in ((300_000, 0.25), (400_000, 1e-5), (70_000, 1.0), (10, 0.5)):
        idx = kept_indices(numel, mask_key(3, 1, 0), density)
        kept = KeptEntries.from_indices(idx, numel)
        assert kept.low.dtype == torch.int16 and kept.numel() == idx.numel()
        assert torch.equal(kept.indices(), idx.long()), (numel, density)
        assert kept.starts[-1] == idx.numel() and kept.starts.numel() == numel // 2**16 + 2


def test_masks_are_deterministic_redrawn_at_resets_and_shard_consistent():
    key = mask_key(seed=7, param_index=2, reset_number=0)
    a = kept_indices(100_000, key, 0.25)
    assert torch.equal(a, kept_indices(100_000, key, 0.25))
    assert abs(a.numel() / 100_000 - 0.25) < 0.01
    b = kept_indices(100_000, mask_key(7, 2, 1), 0.25)
    c = kept_indices(100_000, mask_key(7, 3, 0), 0.25)
    overlap = lambda x, y: len(set(x.tolist()) & set(y.tolist())) / x.numel()
    assert overlap(a, b) < 0.3 and overlap(a, c) < 0.3  # independent draws overlap about 25%
    shard = kept_indices(30_000, key, 0.25, offset=50_000).long() + 50_000
    assert torch.equal(shard, a[(a >= 50_000) & (a < 80_000)].long())


def test_param_groups_split_blocks_from_embeddings_norms_and_head():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.attn = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight  # tied

        def get_output_embeddings(self):
            return self.head

    model = Tiny()
    groups = {g["name"]: g for g in param_groups(model, density=0.25, weight_decay=0.1,
                                                  no_decay_norms_and_biases=True, lr=3e-3)}
    ids = lambda g: {id(p) for p in g["params"]}
    assert ids(groups["blocks"]) == {id(model.attn.weight)} and groups["blocks"]["density"] == 0.25
    assert ids(groups["dense"]) == {id(model.embed.weight)}
    assert ids(groups["no_decay"]) == {id(model.attn.bias), id(model.norm.weight), id(model.norm.bias)}
    assert groups["no_decay"]["weight_decay"] == 0.0 and all(g["lr"] == 3e-3 for g in groups.values())
    SPAM(list(groups.values()))  # every key is a valid SPAM option


@pytest.mark.parametrize(("numel", "density"), [(300_000, 0.25), (400_000, 1e-5), (70_000, 1.0), (5, 0.5)])
def test_bitmap_of_kept_entries_marks_exactly_their_indices(numel, density):
    """The C++ op that turns the index layout into the bitmap the C++ step reads, against the indices."""
    kept = draw_kept(numel, mask_key(2, 0, 1), density)
    bits = torch.ops.spam_opt.kept_bits_of(kept.low, kept.starts, numel)
    assert bits.dtype == torch.int32 and bits.numel() == -(-numel // 32) + 1
    assert torch.equal(unpack_bits(bits, numel).nonzero().squeeze(1), kept.indices())
    assert torch.equal(bits, pack_bits(unpack_bits(bits, numel)))  # nothing set past the entries


def test_bitmap_of_kept_entries_refuses_indices_that_do_not_add_up():
    kept = draw_kept(200_000, mask_key(2, 0, 1), 0.25)
    with pytest.raises(RuntimeError, match="starts does not count"):
        torch.ops.spam_opt.kept_bits_of(kept.low[1:], kept.starts, 200_000)
    with pytest.raises(RuntimeError, match="int16 and starts int64"):
        torch.ops.spam_opt.kept_bits_of(kept.low.int(), kept.starts, 200_000)


def test_cpp_step_builds_its_bitmap_once_per_draw_and_again_when_the_indices_change():
    kept = draw_kept(100_000, mask_key(1, 0, 0), 0.25)
    low = kept.low.clone()
    bits = _kept_bits(KeptEntries(low, kept.starts), 100_000)
    assert _kept_bits(KeptEntries(low, kept.starts), 100_000) is bits  # a step reuses it
    first = int(low[0])
    low[0] = first + 1  # written in place, as loading a state dict into the tensor would
    rebuilt = unpack_bits(_kept_bits(KeptEntries(low, kept.starts), 100_000), 100_000)
    assert rebuilt[first + 1] and not rebuilt[first]
    indices = per_draw(KeptEntries(low, kept.starts), "indices", KeptEntries.indices)  # another kind
    assert torch.equal(indices, KeptEntries(low, kept.starts).indices())
    before = len(kept_module._derived)
    del low
    assert len(kept_module._derived) == before - 2  # both dropped with the state's index tensor


def test_cpp_step_refuses_moments_that_do_not_hold_every_kept_entry():
    """The op's bounds: a bitmap and starts for k kept entries with k - 1 moments is refused, not overrun."""
    kept = draw_kept(100_000, mask_key(1, 0, 0), 0.25)
    k = kept.numel()
    p, g = torch.zeros(100_000), torch.ones(100_000)
    m, v = torch.zeros(k - 1), torch.zeros(k - 1)
    with pytest.raises(RuntimeError, match="kept entries and moments of params\\[0\\] do not match"):
        torch.ops.spam_opt.spam_step_([p], [g], [m], [v], [torch.zeros(())], [_kept_bits(kept, 100_000)],
                                      [kept.starts], None, 1e-3, 0.9, 0.999, 1e-8, 1.0, float("inf"), 1.0)
