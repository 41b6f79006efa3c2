"""``--optimizer muon``: torch.optim.Muon on the block matrices and AdamW on the rest, as one optimizer."""

from __future__ import annotations

import copy

import pytest
import torch

from trainers.config import TrainConfig
from trainers.muon import MuonWithAdamW
from trainers.optimizers import build_optimizer


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    from trainers.models import build_model

    torch.manual_seed(seed)
    return build_model("llama-tiny", vocab_size=257, seq_len=32)


def is_block_matrix(name: str, p: torch.Tensor) -> bool:
    """The split by name, independently of spam_opt.param_groups: 2-D weights inside the decoder layers."""
    return p.dim() == 2 and ".layers." in name


def train_steps(model: torch.nn.Module, opts: list, steps: range, scheduler=None) -> None:
    for step in steps:
        ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad()
        if scheduler is not None:
            scheduler.step()


def test_every_block_matrix_is_under_muon_and_every_other_parameter_under_adamw(one_torch_thread):
    model = tiny_llama()
    opt = build_optimizer(TrainConfig(optimizer="muon", lr=1e-3), model)
    assert isinstance(opt, MuonWithAdamW)
    muon, adamw = opt.param_groups  # Muon's group first, AdamW's second: the same dicts the two step
    assert muon is opt._muon.param_groups[0] and adamw is opt._adamw.param_groups[0]
    assert "ns_steps" in muon and "betas" in adamw
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon["params"]} == {n for n, p in model.named_parameters()
                                                      if is_block_matrix(n, p)}
    assert {names[id(p)] for p in adamw["params"]} == {n for n, p in model.named_parameters()
                                                       if not is_block_matrix(n, p)}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= {
        names[id(p)] for p in adamw["params"]}
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each parameter exactly once


@pytest.mark.parametrize("fused", [None, True])
def test_a_step_equals_muon_and_adamw_stepped_separately(one_torch_thread, fused):
    ours, theirs = tiny_llama(), tiny_llama()
    options = dict(lr=2e-2, weight_decay=0.01)
    opt = MuonWithAdamW(ours, betas=(0.9, 0.95), fused=fused, **options)
    named = list(theirs.named_parameters())
    reference = [
        torch.optim.Muon([p for n, p in named if is_block_matrix(n, p)], momentum=0.95, nesterov=True,
                         ns_steps=5, adjust_lr_fn="match_rms_adamw", **options),
        torch.optim.AdamW([p for n, p in named if not is_block_matrix(n, p)], betas=(0.9, 0.95), fused=fused,
                          **options),
    ]
    before = [p.detach().clone() for p in ours.parameters()]
    train_steps(ours, [opt], range(3))
    train_steps(theirs, reference, range(3))
    for (name, a), b, start in zip(ours.named_parameters(), theirs.parameters(), before):
        assert torch.equal(a, b), name  # bit for bit
        assert not torch.equal(a, start), name  # and every parameter moved


def test_a_saved_and_loaded_state_continues_bit_for_bit_and_the_schedule_reaches_both(one_torch_thread):
    from transformers import get_cosine_schedule_with_warmup

    def build(model):
        opt = build_optimizer(TrainConfig(optimizer="muon", lr=1e-2), model)
        return opt, get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=8)

    model = tiny_llama()
    opt, scheduler = build(model)
    train_steps(model, [opt], range(3), scheduler)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), scheduler.state_dict()))
    train_steps(model, [opt], range(3, 8), scheduler)  # the uninterrupted run

    resumed = tiny_llama(seed=1)  # other weights, loaded over
    resumed.load_state_dict(saved[0])
    ropt, rscheduler = build(resumed)
    ropt.load_state_dict(saved[1])
    rscheduler.load_state_dict(saved[2])
    assert ropt._muon.state is ropt.state and ropt._adamw.state is ropt.state
    assert ropt._muon.param_groups[0] is ropt.param_groups[0]
    assert ropt._adamw.param_groups[0] is ropt.param_groups[1]
    train_steps(resumed, [ropt], range(3, 8), rscheduler)
    # the schedule moved the lr of the loaded groups, and both inner optimizers stepped with it
    lr = rscheduler.get_last_lr()[0]
    assert lr != saved[1]["param_groups"][0]["lr"]
    assert ropt._muon.param_groups[0]["lr"] == ropt._adamw.param_groups[0]["lr"] == lr
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_a_model_without_block_matrices_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.LayerNorm(8))
    with pytest.raises(ValueError, match="found no block matrices .* use adamw"):
        build_optimizer(TrainConfig(optimizer="muon"), model)
