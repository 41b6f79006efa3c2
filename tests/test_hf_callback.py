"""The monitor inside transformers.Trainer: a tiny LLaMA trained a few steps with SPAM and the callback."""

from __future__ import annotations

import json

import pytest
import torch

from spam_opt.monitor.hf_callback import SpikeMonitorCallback
from spam_opt.spam import SPAM

transformers = pytest.importorskip("transformers", reason="the Trainer callback needs transformers")


class _Recorder(transformers.TrainerCallback):
    """What the Trainer itself reports, and the optimizer's clip counts read at every step: the reference."""

    def __init__(self):
        self.logs: dict[int, dict] = {}
        self.clipped: dict[int, int] = {}

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.clipped[state.global_step + 1] = int(optimizer.optimizer.spike_stats().total_clipped())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:  # not the end-of-training summary
            self.logs[state.global_step] = dict(logs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only contend


def test_trainer_with_spam_and_the_callback_writes_spikes_and_metrics(tmp_path):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16), generator=gen)]
    optimizer = SPAM(model.parameters(), lr=3e-3, threshold=20.0, reset_interval=5, warmup_steps=2,
                     clip_delay=2)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=12,
                                          per_device_train_batch_size=4, logging_steps=4, max_grad_norm=0.0,
                                          report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                          dataloader_num_workers=0)
    recorder = _Recorder()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                                   callbacks=[SpikeMonitorCallback(), recorder])
    trainer.train()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    monitored = {r["step"]: r for r in rows if "grad_norm" in r}
    assert sorted(monitored) == [4, 8, 12]
    for step, row in monitored.items():  # the Trainer's own (unclipped) norm of the same step
        assert row["grad_norm"] == pytest.approx(recorder.logs[step]["grad_norm"], rel=1e-4)
        assert len(row["grad_score"]) == len(list(model.parameters()))
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert losses == {s: pytest.approx(recorder.logs[s]["loss"]) for s in (4, 8, 12)}
    events = [json.loads(line) for line in (tmp_path / "spikes.jsonl").read_text().splitlines()]
    clips: dict[int, int] = {}
    for e in events:
        if e["kind"] == "clip":
            clips[e["step"]] = clips.get(e["step"], 0) + e["value"]
    assert clips and clips == {s: c for s, c in recorder.clipped.items() if c}
    assert [e["step"] for e in events if e["kind"] == "momentum_reset"] == [5, 10]


def test_callback_rejects_unknown_options():
    with pytest.raises(ValueError, match="log_evry"):
        SpikeMonitorCallback(log_evry=5)
