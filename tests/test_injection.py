"""What stress tests do to a run on purpose (degenerate batches), and ZClip's checkpointed state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.clipping import CheckpointedZClip
from trainers.injection import degenerate_batch


def test_degenerate_batches_keep_the_shape_and_are_a_function_of_seed_and_step():
    batch = torch.arange(64).view(4, 16) % 50
    random = degenerate_batch(batch, "random", 257, seed=1, step=9)
    assert random.shape == batch.shape and random.dtype == batch.dtype
    assert torch.equal(random, degenerate_batch(batch, "random", 257, seed=1, step=9))
    assert not torch.equal(random, degenerate_batch(batch, "random", 257, seed=1, step=10))
    assert int(random.max()) < 257 and len(random.unique()) > 40  # spread over the vocabulary
    repeat = degenerate_batch(batch, "repeat", 257, seed=1, step=9)
    assert torch.equal(repeat, batch[:, :1].expand(4, 16))
    shuffled = degenerate_batch(batch, "shuffle", 257, seed=1, step=9)
    assert torch.equal(shuffled.flatten().sort().values, batch.flatten().sort().values)
    assert not torch.equal(shuffled, batch)
    with pytest.raises(ValueError, match="bad_batch"):
        degenerate_batch(batch, "zeros", 257, seed=1, step=9)


def _grads(model, t):
    gen = torch.Generator().manual_seed(t)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * (50.0 if t in (30, 41) else 1.0)


def test_zclip_clips_outliers_and_resumes_from_its_state_dict():
    model = nn.Linear(8, 4)
    whole, norms = CheckpointedZClip(max_grad_norm=None), []
    for t in range(50):
        _grads(model, t)
        whole.step(model)
        norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
    assert norms[30] < 20 and norms[41] < 20  # the 50x steps came out clipped (unclipped norm is ~300)

    first = CheckpointedZClip(max_grad_norm=None)
    for t in range(35):
        _grads(model, t)
        first.step(model)
    state = first.state_dict()
    resumed = CheckpointedZClip(max_grad_norm=None)
    resumed.load_state_dict(state)
    for t in range(35, 50):
        _grads(model, t)
        resumed.step(model)
        assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == norms[t]
