"""DDP with 2 CPU processes (gloo): the same training as one process with the same global batch, and an
exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from letters_corpus import write_letters_corpus

from trainers.pretrain import main

pytestmark = pytest.mark.distributed


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def train_on_two_cpu_processes(argv: list[str]) -> None:
    """``python -m trainers.pretrain ARGV`` on 2 CPU processes, as docs/training.md runs it: torchrun (or
    ``accelerate launch --multi_gpu`` with ACCELERATE_USE_CPU=true); Accelerate picks MULTI_CPU, gloo."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "trainers.pretrain", *argv]
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    corpus = write_letters_corpus(tmp_path / "corpus.jsonl")
    common = ["--model", "llama-tiny", "--dataset", str(corpus), "--cache-dir", str(tmp_path / "cache"),
              "--seq-len", "32", "--max-steps", "6", "--lr-warmup-steps", "2", "--log-every", "1",
              "--eval-every", "3", "--eval-batches", "2", "--save-every", "3", "--output-dir", str(tmp_path),
              "--no-progress-bar", "--no-dashboard", "--trackers", "",
              "--optimizer", "spam", "--density", "0.5"]
    train_on_two_cpu_processes([*common, "--batch-size", "2", "--run-name", "ddp"])
    single = main([*common, "--batch-size", "4", "--run-name", "single"])

    ddp_dir = tmp_path / "ddp"
    launch = yaml.safe_load((ddp_dir / "config.yaml").read_text())["launch"]
    assert launch["num_processes"] == 2 and launch["distributed_type"] == "MULTI_CPU"
    assert {p.name for p in (ddp_dir / "checkpoints" / "step_6").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    ddp, ref = losses(ddp_dir), losses(single)
    assert ddp.keys() == ref.keys() == set(range(1, 7))
    for step in ref:  # averaged gradients = the big batch's gradient, up to float32 summation order
        assert ddp[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6)
    evals = [json.loads(line) for line in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_loss" in r] == [3, 6]

    # Resumed on two processes from the step-3 checkpoint, the run repeats steps 4-6 exactly: each rank
    # restores its own RNG state and data position, SPAM its sparse masks and schedule.
    train_on_two_cpu_processes([*common, "--batch-size", "2", "--run-name", "ddp-resumed", "--resume",
                                str(ddp_dir / "checkpoints" / "step_3")])
    resumed = losses(tmp_path / "ddp-resumed")
    assert resumed == {step: ddp[step] for step in (4, 5, 6)}
