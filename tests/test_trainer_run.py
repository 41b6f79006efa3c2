"""The pretraining loop end to end on tiny models: run layout, exact resume, checkpoints, bad input."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainers import data
from trainers.checkpointing import checkpoints
from trainers.config import TrainConfig
from trainers.optimizers import build_optimizer
from trainers.pretrain import main

WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "spam", "clips", "spikes", "and", "adam", "resets",
         "its", "moments", "every", "step"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic JSONL corpus, repetitive enough that a tiny model learns it in a few steps."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) for _ in range(300)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture
def run(tmp_path, corpus, cache_dir):
    """``run(name, *flags)`` trains in-process with small defaults; returns the run directory."""

    def _run(name: str, *flags: str) -> Path:
        base = ["--model", "llama-tiny", "--dataset", str(corpus), "--cache-dir", cache_dir,
                "--seq-len", "32", "--batch-size", "4", "--max-steps", "8", "--lr-warmup-steps", "2",
                "--lr", "3e-3",
                "--log-every", "1", "--eval-every", "4", "--eval-batches", "2", "--save-every", "3",
                "--output-dir", str(tmp_path), "--run-name", name, "--no-progress-bar", "--no-dashboard",
                "--trackers", ""]
        return main(base + list(flags))

    return _run


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_run_directory_layout_and_learning(run):
    run_dir = run("layout", "--max-steps", "24", "--save-every", "5", "--keep-checkpoints", "2",
                  "--eval-every", "12", "--trackers", "tensorboard")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 25))
    assert all({"lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in train_rows)
    assert [r["step"] for r in rows if "eval_loss" in r] == [12, 24]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.0  # it learns the tiny vocabulary
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["launch"]["num_processes"] == 1 and saved["max_steps"] == 24
    assert [p.name for p in checkpoints(run_dir)] == ["step_24", "step_20"]  # the last 2 kept
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "final"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "final"))
    ids = torch.tensor([tok("the cat sat on a mat")["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < train_rows[0]["loss"] - 1.0  # the saved weights are the trained ones


def resumed_from(run_dir: Path) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["launch"]["resumed_from"]


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Make the run die when it fetches the data of ``step`` (1-based), like a killed job."""
    for kind in (data.BlockBatches, data.StreamBatches):

        def dying(self, index, original=kind.__getitem__):
            if self.shuffle and index == step - 1:
                raise KeyboardInterrupt
            return original(self, index)

        monkeypatch.setattr(kind, "__getitem__", dying)


@pytest.mark.parametrize("optimizer, extra", [
    ("adamw", []),
    ("adamw", ["--streaming", "--stream-val-docs", "20"]),  # the one-pass reader resumes exactly too
    # Degenerate batches and entry spikes on both sides of the save point, through ZClip.
    ("adamw", ["--zclip", "--max-grad-norm", "1.0", "--bad-batch-steps", "2,7", "--inject-spike-steps", "3,6",
               "--inject-fraction", "0.05"]),
    # Resets, warmup and clipping all happen inside 8 steps; sparse momentum is redrawn at the reset.
    ("spam", ["--density", "0.5", "--reset-interval", "4", "--reset-warmup-steps", "2", "--clip-delay", "1",
              "--spike-threshold", "2.0"]),
    ("muon", []),  # two inner optimizers, one saved state
])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(run, tmp_path, monkeypatch, optimizer, extra):
    reference = losses(run("whole", "--optimizer", optimizer, *extra))
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 6)
        with pytest.raises(KeyboardInterrupt):
            run("broken", "--optimizer", optimizer, *extra)
    assert max(losses(tmp_path / "broken")) == 5 and checkpoints(tmp_path / "broken")[0].name == "step_3"
    resumed_dir = run("broken", "--optimizer", optimizer, "--resume", "auto", *extra)
    assert resumed_from(resumed_dir).endswith("step_3")
    assert losses(resumed_dir) == reference  # exact float equality, every step


def test_resume_after_a_crash_that_cut_the_last_log_line(run, tmp_path, monkeypatch, caplog):
    """The crash --resume auto exists for can leave half a line in the logs: it is dropped with a warning."""
    reference = losses(run("whole"))
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 6)
        with pytest.raises(KeyboardInterrupt):
            run("cut")
    run_dir = tmp_path / "cut"
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 5.1')  # the write the crash interrupted
    with (run_dir / "spikes.jsonl").open("a") as f:
        f.write('{"step": 6, "param": "lo')
    kept_spikes = [json.loads(line) for line in (run_dir / "spikes.jsonl").read_text().splitlines()[:-1]]
    with caplog.at_level("WARNING"):
        resumed = run("cut", "--resume", "auto")
    assert "metrics.jsonl: skipped 1 unreadable line(s)" in caplog.text
    assert "spikes.jsonl: skipped 1 unreadable line(s)" in caplog.text
    assert losses(resumed) == reference  # every line parses again, no step lost or doubled
    spikes = [json.loads(line) for line in (resumed / "spikes.jsonl").read_text().splitlines()]
    assert [e for e in spikes if e["step"] <= 3] == [e for e in kept_spikes if e["step"] <= 3]


def test_a_tuning_split_is_evaluated_beside_validation(run):
    rows = [json.loads(line) for line in (run("tuned", "--tune-fraction", "0.1", "--save-every", "0")
                                          / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert all("tune_loss" in r and 0 < r["tune_loss"] < 10 for r in evals)
    assert all(r["tune_loss"] != r["eval_loss"] for r in evals)  # other documents
    assert not [r for r in rows if "tune_loss" in r and "eval_loss" not in r]  # only at evaluations
    plain = run("untuned", "--save-every", "0") / "metrics.jsonl"
    assert "tune_loss" not in plain.read_text()
    assert [r["step"] for r in map(json.loads, plain.read_text().splitlines()) if "eval_loss" in r] == [4, 8]


def test_gradient_accumulation_equals_the_larger_batch(run):
    whole = losses(run("big", "--batch-size", "4", "--max-steps", "4"))
    accumulated = losses(run("accum", "--batch-size", "2", "--grad-accum", "2", "--max-steps", "4"))
    assert whole.keys() == accumulated.keys()
    for step in whole:
        assert accumulated[step] == pytest.approx(whole[step], rel=1e-5)


def test_bf16_mixed_precision_runs_close_to_fp32(run):
    fp32 = losses(run("fp32", "--max-steps", "4"))
    bf16 = losses(run("bf16", "--max-steps", "4", "--mixed-precision", "bf16"))
    assert all(abs(bf16[s] - fp32[s]) < 0.05 for s in fp32) and bf16 != fp32


def test_a_kill_mid_save_never_leaves_a_complete_looking_checkpoint(run, tmp_path, monkeypatch):
    from accelerate import Accelerator

    original, calls = Accelerator.save_state, []

    def dies_on_second_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        original(self, output_dir, **kwargs)
        if len(calls) == 2:  # files written, manifest and rename not yet done
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "save_state", dies_on_second_save)
        with pytest.raises(KeyboardInterrupt):
            run("killed")
    run_dir = tmp_path / "killed"
    assert [p.name for p in checkpoints(run_dir)] == ["step_3"]
    assert (run_dir / "checkpoints" / ".tmp-step_6").is_dir()
    resumed = run("killed", "--resume", "auto")
    assert resumed_from(resumed).endswith("step_3")
    assert [p.name for p in checkpoints(run_dir)] == ["step_8", "step_6"]


@pytest.mark.parametrize("damage", ["truncate", "scramble"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(run, caplog, damage):
    run_dir = run("corrupt", "--max-steps", "6", "--keep-checkpoints", "3")
    weights = run_dir / "checkpoints" / "step_6" / "model.safetensors"
    blob = weights.read_bytes()
    # Truncation is caught by the manifest; same-size garbage only when loading fails.
    weights.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else b"\xff" * len(blob))
    with caplog.at_level("WARNING"):
        resumed = run("corrupt", "--max-steps", "6", "--keep-checkpoints", "3", "--resume", "auto")
    assert "skipping checkpoint" in caplog.text and "step_6" in caplog.text
    assert resumed_from(resumed).endswith("step_3")
    assert sorted(losses(resumed)) == list(range(1, 7))


def test_no_usable_checkpoint_is_an_error(run):
    run_dir = run("hopeless", "--max-steps", "3")
    (run_dir / "checkpoints" / "step_3" / "checkpoint.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="no usable checkpoint"):
        run("hopeless", "--max-steps", "3", "--resume", "auto")


def test_bad_input_is_a_clear_error(run, tmp_path, corpus):
    with pytest.raises(ValueError, match="seq_len=512 is longer than the context"):
        run("long", "--seq-len", "512")
    config_dir = tmp_path / "model"
    config_dir.mkdir()
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                num_hidden_layers=1).save_pretrained(str(config_dir))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        run("vocab", "--model", str(config_dir))
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        run("missing", "--dataset", str(tmp_path / "nowhere.jsonl"))
    run("taken", "--max-steps", "1")
    with pytest.raises(FileExistsError, match="--resume auto"):
        run("taken", "--max-steps", "1")


def test_a_local_config_directory_is_a_model(run, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=257, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                num_hidden_layers=1, max_position_embeddings=64).save_pretrained(str(tmp_path / "m"))
    run_dir = run("local-model", "--model", str(tmp_path / "m" / "config.json"), "--max-steps", "2")
    assert json.loads((run_dir / "final" / "config.json").read_text())["hidden_size"] == 16


@pytest.mark.parametrize("name", ["spam", "stable-spam", "adamw", "muon", "adamw8bit", "adafactor"])
def test_every_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
    cfg = TrainConfig(optimizer=name, lr=1e-2, density=0.5 if name == "spam" else 1.0)
    opt = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.arange(10)).logsumexp(-1).mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    if name == "spam":
        densities = {g["name"]: g["density"] for g in opt.param_groups}
        assert densities == {"blocks": 0.5, "dense": 1.0}


@pytest.mark.parametrize(("optimizer", "density"), [("spam", 1.0), ("spam", 0.5), ("stable-spam", 1.0)])
def test_spam_and_stable_spam_with_8bit_state_build_and_step(optimizer, density):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
    opt = build_optimizer(TrainConfig(optimizer=optimizer, state_bits=8, density=density, lr=1e-2), model)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.arange(10)).logsumexp(-1).mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert opt.state[model[1].weight]["exp_avg"].dtype == torch.int8  # 2-D: 8-bit
    assert opt.state[model[1].bias]["exp_avg"].dtype == torch.float32  # 1-D: float32
    with pytest.raises(ValueError, match="state_bits=8 is an option of spam and stable-spam"):
        TrainConfig(optimizer="adamw", state_bits=8).validate()
    with pytest.raises(ValueError, match="accepted values are 8, 32"):
        TrainConfig(state_bits=4).validate()


@pytest.mark.parametrize("name", ["galore", "adam-mini", "torchao-adamw8bit"])
def test_memory_saving_peers_build_and_step(name, monkeypatch):
    from trainers.models import build_model

    torch.manual_seed(0)
    model = build_model("llama-tiny", vocab_size=257, seq_len=32)
    # torchao compiles its step on first use; eager is enough to show that it builds and steps
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    opt = build_optimizer(TrainConfig(optimizer=name, lr=1e-2), model)
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 257, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    if name == "galore":  # the block matrices get the projection, at a quarter of the hidden size
        ranks = [g.get("rank") for g in opt.param_groups]
        assert ranks.count(model.config.hidden_size // 4) == 1 and ranks.count(None) == 1
        ranked = build_optimizer(TrainConfig(optimizer="galore", optimizer_kwargs={"rank": 3}), model)
        assert [g.get("rank") for g in ranked.param_groups if "rank" in g] == [3]


def test_a_missing_memory_peer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"needs the galore-torch package: pip install spam-opt\[memory\]"):
        build_optimizer(TrainConfig(optimizer="galore"), torch.nn.Linear(2, 2))


def test_optimizer_kwargs_the_optimizer_rejects_are_a_clear_error():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="rejected its options"):
        build_optimizer(TrainConfig(optimizer="adamw", optimizer_kwargs={"threshold": 5}), model)


@pytest.mark.parametrize("name, millions", [("llama-9m", 9), ("llama-20m", 20), ("llama-35m", 35),
                                            ("llama-60m", 60), ("llama-130m", 130), ("llama-350m", 350),
                                            ("llama-1b", 1000)])
def test_llama_presets_have_the_paper_sizes(name, millions):
    from trainers.models import build_model

    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(name, vocab_size=32000, seq_len=256)  # the paper's 32k vocabulary
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert 0.85 * millions < count < 1.4 * millions


def test_unknown_model_lists_the_presets():
    from trainers.models import build_model

    with pytest.raises(ValueError, match="llama-60m"):
        build_model("gpt-17", vocab_size=257, seq_len=32)


def test_spike_guard_skips_an_injected_spike(run):
    run_dir = run("guarded", "--spike-guard", "--guard-min-history", "4", "--inject-spike-steps", "7",
                  "--inject-factor", "1e6", "--optimizer", "adamw")
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "guard_skipped" in r}
    assert rows[7]["guard_skipped"] == 0 and rows[8]["guard_skipped"] == 1  # counted before each step


def test_the_monitor_sees_a_spike_that_the_norm_clip_scales_away(run):
    """One tensor's gradient 1e4x at step 58 under --max-grad-norm 1: the clip scales it back with every
    other tensor, but the monitor observes before the clip, so the spike is logged where it happened."""
    run_dir = run("clipped", "--optimizer", "adamw", "--max-grad-norm", "1.0", "--max-steps", "60",
                  "--inject-spike-steps", "58", "--inject-factor", "1e4",
                  "--inject-pattern", r"layers\.0\.mlp\.up_proj", "--eval-every", "0", "--save-every", "0")
    events = [json.loads(line) for line in (run_dir / "spikes.jsonl").read_text().splitlines()]
    gradient = [e for e in events if e["kind"] in ("grad_norm", "grad_max")]
    assert gradient and {e["step"] for e in gradient} == {58}
    assert all("layers.0.mlp.up_proj" in e["param"] for e in gradient)
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "grad_norm" in r}
    assert rows[58]["grad_norm"] > 100 * rows[57]["grad_norm"]  # the norm before the clip


def test_spikegpt_trains_through_the_registry_and_logs_firing_rates(run):
    run_dir = run("spiking", "--model", "spikegpt-tiny", "--max-steps", "2", "--save-every", "0",
                  "--eval-every", "0")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [k for k in rows[-1] if k.startswith("firing_rate/")]
    assert rates and all(0.0 <= rows[-1][k] <= 1.0 for k in rates) and rows[-1]["synops"] > 0
    with pytest.raises(ValueError, match="longer than the context"):
        run("spiking-long", "--model", "spikegpt-tiny", "--seq-len", "512")


def test_the_command_line_shows_bad_input_as_one_error_line_not_a_traceback():
    command = [sys.executable, "-m", "trainers.pretrain", "--optimizer", "adamw", "--density", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: density=0.5 is a SPAM option; use --optimizer spam or --density 1")
    assert "Traceback" not in done.stderr
