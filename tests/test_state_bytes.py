"""spam_opt.state_bytes against byte counts worked out by hand from each optimizer's documented state."""

import pytest
import torch

from spam_opt import SPAM
from spam_opt.state_bytes import params_of, state_bytes


def _stepped(make, shapes):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = make(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def test_adamw_counts_two_float32_moments_and_not_the_step_counter():
    opt = _stepped(lambda ps: torch.optim.AdamW(ps), [(64, 32), (32,)])
    assert params_of(opt) == 64 * 32 + 32
    assert state_bytes(opt) == 2 * 4 * (64 * 32 + 32)


def test_sparse_spam_holds_moments_and_a_record_for_the_kept_quarter_only():
    dense = _stepped(lambda ps: SPAM(ps, density=1.0), [(256, 128)])
    sparse = _stepped(lambda ps: SPAM(ps, density=0.25), [(256, 128)])
    assert state_bytes(dense) == 2 * 4 * 256 * 128
    kept = next(iter(sparse.state.values()))["kept_low"].numel()
    assert abs(kept / (256 * 128) - 0.25) < 0.01
    # per kept entry two float32 moments and an int16 index; int64 counts at both ends of one 2**16 block
    assert state_bytes(sparse) == (2 * 4 + 2) * kept + 8 * 2


def test_a_tensor_shared_between_parameters_counts_once():
    shared = torch.zeros(100)

    class Holder:
        state = {0: {"map": shared, "m": torch.zeros(10)}, 1: {"map": shared, "m": torch.zeros(10)}}

    assert state_bytes(Holder) == 4 * (100 + 10 + 10)


def test_torchao_8bit_state_counts_its_codes_scales_and_maps():
    torchao_optim = pytest.importorskip("torchao.optim")
    opt = _stepped(lambda ps: torchao_optim.AdamW8bit(ps, block_size=256), [(512, 256)])
    # per moment: one uint8 code per entry, one float32 scale per block of 256, a 256-entry float32 map
    assert state_bytes(opt) == 2 * (512 * 256 + 4 * 512 + 4 * 256)


def test_galore_counts_the_projector_kept_inside_its_state():
    galore = pytest.importorskip("galore_torch")
    opt = _stepped(lambda ps: galore.GaLoreAdamW([{"params": ps, "rank": 4, "update_proj_gap": 200,
                                                   "scale": 0.25, "proj_type": "std"}]), [(64, 32)])
    # the (4 x 32) projection matrix, and both moments in the projected (64 x 4) space
    assert state_bytes(opt) == 4 * (4 * 32 + 2 * 64 * 4)


def test_a_sharded_dtensor_counts_only_this_process_shard():
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        moment = distribute_tensor(torch.randn(8, 4), init_device_mesh("cpu", (2,)), [Shard(0)])

        class Holder:
            state = {0: {"exp_avg": moment, "step": torch.tensor(1.0)}}

        assert moment.numel() == 32
        assert state_bytes(Holder) == 4 * 16
    finally:
        dist.destroy_process_group()
