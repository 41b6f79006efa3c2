"""``--fsdp`` (FSDP2 with gloo on CPU): the same training as one process, DCP checkpoints that resume on
another number of processes (2 -> 4 -> 1), the corrupt-checkpoint fallback, exact optimizer state after
resharding, and the export of a sharded checkpoint.

Two launches do all the multi-process work (``tests/workers/fsdp_jobs.py`` runs a list of jobs in each): two
processes first, then four; the single-process runs happen in this process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from letters_corpus import write_letters_corpus

from spam_opt.sparse import kept_indices, mask_key
from trainers.checkpointing import checkpoints
from trainers.pretrain import main

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).parent / "workers" / "fsdp_jobs.py"
SPAM_SPARSE = ["--optimizer", "spam", "--density", "0.5", "--reset-interval", "4",
               "--reset-warmup-steps", "2", "--clip-delay", "1", "--spike-threshold", "2.0"]
# name -> flags of the runs that the two-process launch trains with --fsdp
RUNS = {
    "sparse": [*SPAM_SPARSE, "--spike-guard", "--grad-accum", "2", "--save-every", "2"],
    "spikegpt": ["--model", "spikegpt-tiny", "--optimizer", "stable-spam", "--max-steps", "3"],
    "adamw": ["--optimizer", "adamw", "--spike-guard", "--max-grad-norm", "0.5", "--max-steps", "4",
              "--save-every", "2", "--quant", "int4", "--quant-group-size", "32"],  # quantized, then sharded
    "dense": ["--optimizer", "spam", "--max-steps", "3"],
    "sparse8": [*SPAM_SPARSE, "--state-bits", "8", "--save-every", "2"],
}
# SpikeGPT has dropout, and each process draws its own masks from the same seed, so a data-parallel run
# differs from one process by design: its reference is the same run under DDP (two processes, no --fsdp).
SINGLE = ("sparse", "adamw", "dense")


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def assert_close(got: dict[int, float], expected: dict[int, float], rel: float = 1e-5) -> None:
    assert got.keys() == expected.keys()
    for step in got:  # the same global batch: equal up to float32 summation order
        assert got[step] == pytest.approx(expected[step], rel=rel, abs=1e-6), step


def launch(processes: int, jobs: list[dict], tmp: Path) -> str:
    plan = tmp / f"jobs_{processes}.json"
    plan.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           str(WORKER), str(plan)]
    # The worker script's folder comes first on its path: the trainer must still be this checkout's.
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", PYTHONPATH=path)
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every run of the module: trained once, inspected by the tests below."""
    tmp = tmp_path_factory.mktemp("fsdp")
    corpus = write_letters_corpus(tmp / "corpus.jsonl")
    common = ["--model", "llama-tiny", "--dataset", str(corpus), "--cache-dir", str(tmp / "cache"),
              "--seq-len", "32", "--global-batch-size", "8", "--max-steps", "8", "--lr-warmup-steps", "2",
              "--log-every", "1", "--eval-every", "4", "--eval-batches", "1", "--keep-checkpoints", "0",
              "--output-dir", str(tmp), "--no-progress-bar", "--no-dashboard", "--trackers", ""]

    def flags(run: str, name: str, *extra: str) -> list[str]:
        return [*common, *RUNS[run], "--run-name", name, *extra]

    two = [{"train": flags(name, name, "--fsdp")} for name in ("sparse", "spikegpt", "adamw")]
    two += [{"train": flags("spikegpt", "spikegpt-ddp")},
            {"train": flags("dense", "dense", "--fsdp", "--mixed-precision", "bf16")},
            {"train": flags("sparse8", "sparse8", "--fsdp")},
            {"train": flags("sparse", "sparse-killed", "--fsdp"), "interrupt_at": 8},  # step 5 (2 per step)
            {"train": flags("sparse", "sparse-killed", "--fsdp", "--resume", "auto")},
            {"save_state": str(tmp / "state")}]
    launch(2, two, tmp)

    # Four processes continue the sparse run from a copy whose newest checkpoint is corrupt (same size,
    # garbage bytes): they must fall back to step 2.
    shutil.copytree(tmp / "sparse", tmp / "sparse4",
                    ignore=shutil.ignore_patterns("step_6", "step_8", "final"))
    shard = tmp / "sparse4" / "checkpoints" / "step_4" / "__1_0.distcp"
    shard.write_bytes(bytes(random.Random(0).randbytes(shard.stat().st_size)))
    (tmp / "state2").mkdir()
    four = [{"train": flags("sparse", "sparse4", "--fsdp", "--resume", "auto")},
            {"train": flags("adamw", "adamw4", "--fsdp", "--resume",
                            str(tmp / "adamw" / "checkpoints" / "step_2"))},
            {"train": flags("sparse8", "sparse8-4", "--fsdp", "--resume",
                            str(tmp / "sparse8" / "checkpoints" / "step_4"))},
            {"load_state": str(tmp / "state"), "then_save": str(tmp / "state2")}]
    four_log = launch(4, four, tmp)

    single = {name: main(flags(name, f"single-{name}")) for name in SINGLE}
    single["spikegpt"] = tmp / "spikegpt-ddp"
    one = main(flags("sparse", "sparse1", "--fsdp", "--resume",
                     str(tmp / "sparse4" / "checkpoints" / "step_6")))
    return dict(tmp=tmp, common=common, single=single, one=one, four_log=four_log)


def test_fsdp_training_matches_one_process_with_the_same_global_batch(runs):
    """LLaMA with SPAM (sparse, dense in bf16) and AdamW (int4 fake quantization) against one process;
    SpikeGPT against DDP."""
    tmp = runs["tmp"]
    for name in ("sparse", "spikegpt", "adamw"):
        fsdp, single = rows(tmp / name), rows(runs["single"][name])
        for column in ("loss", "grad_norm"):  # the monitor's norms are the full tensors' (all-reduced)
            assert_close({s: r[column] for s, r in fsdp.items()}, {s: r[column] for s, r in single.items()})
        launch_info = yaml.safe_load((tmp / name / "config.yaml").read_text())["launch"]
        assert launch_info["num_processes"] == 2 and launch_info["batch_size_per_process"] == 4
    sparse, single = rows(tmp / "sparse"), rows(runs["single"]["sparse"])
    assert [r["clipped"] for r in sparse.values()] == [r["clipped"] for r in single.values()]
    assert sum(r["clipped"] for r in sparse.values()) > 0  # the clip counts are summed over the shards
    # bf16 compute with float32 reduction and master weights: close to the float32 run, not equal.
    assert_close(losses(tmp / "dense"), losses(runs["single"]["dense"]), rel=2e-2)
    assert losses(tmp / "dense") != losses(runs["single"]["dense"])


def test_a_killed_run_resumes_exactly_on_the_same_number_of_processes(runs):
    tmp = runs["tmp"]
    killed = tmp / "sparse-killed"
    assert yaml.safe_load((killed / "config.yaml").read_text())["launch"]["resumed_from"].endswith("step_4")
    assert losses(killed) == losses(tmp / "sparse")  # exact float equality, every step


def test_resume_on_four_then_one_process_after_skipping_a_corrupt_checkpoint(runs):
    tmp = runs["tmp"]
    launch_info = yaml.safe_load((tmp / "sparse4" / "config.yaml").read_text())["launch"]
    assert launch_info["num_processes"] == 4 and launch_info["batch_size_per_process"] == 2
    assert launch_info["resumed_from"].endswith("step_2")
    assert "skipping checkpoint" in runs["four_log"] and "step_4" in runs["four_log"]
    reference = losses(tmp / "sparse")
    assert_close(losses(tmp / "sparse4"), reference)  # steps 1-2 from the copy, 3-8 trained on 4
    assert_close(losses(runs["one"]), {s: reference[s] for s in (7, 8)})
    assert_close(losses(tmp / "adamw4"), {s: losses(tmp / "adamw")[s] for s in (3, 4)})
    # SPAM with 8-bit state (sparse): saved on 2 processes at step 4, steps 5-8 on 4
    assert_close(losses(tmp / "sparse8-4"), {s: losses(tmp / "sparse8")[s] for s in range(5, 9)})
    assert [p.name for p in checkpoints(tmp / "sparse4")] == ["step_8", "step_6", "step_4", "step_2"]


def test_optimizer_state_is_exact_after_resharding_and_kept_entries_follow_the_hash(runs):
    tmp = runs["tmp"]
    saved = torch.load(tmp / "state" / "state_2.pt")
    for loaded in (torch.load(tmp / "state" / "loaded_4.pt"), torch.load(tmp / "state2" / "loaded_1.pt")):
        assert loaded.keys() == saved.keys()
        for kind in saved:
            assert loaded[kind].keys() == saved[kind].keys()
            for name, state in saved[kind].items():
                assert loaded[kind][name].keys() == state.keys(), name
                for key, value in state.items():
                    got = loaded[kind][name][key]
                    assert torch.equal(torch.as_tensor(got), torch.as_tensor(value)), (kind, name, key)
    spam = saved["spam"]
    assert "kept" not in spam["0.bias"] and "kept" not in saved["stable"]["0.weight"]
    # SPAM's matrices (its parameters 0 and 1: the first group) keep the entries the hash says after the
    # reset at step 4 (reset number 1).
    for index, (name, numel) in enumerate([("0.weight", 37 * 12), ("2.weight", 13 * 37)]):
        assert spam[name]["reset_number"] == 1
        expected = kept_indices(numel, mask_key(7, index, 1), 0.3).long()
        assert torch.equal(spam[name]["kept"], expected)
        assert spam[name]["exp_avg"].shape == expected.shape and spam[name]["exp_avg"].abs().sum() > 0
    # SPAM in 8 bits: the same hash; int8/uint8 codes for the kept entries only; a float32 scale per block
    # (two blocks per row of 300 entries, one per row of 37) and float32 moments for the 1-D parameters.
    spam8 = saved["spam8"]
    matrices = [("0.weight", 37, 300, 2), ("2.weight", 13, 37, 1)]
    for index, (name, rows, row_length, blocks) in enumerate(matrices):
        state = spam8[name]
        expected = kept_indices(rows * row_length, mask_key(7, index, 1), 0.3).long()
        assert torch.equal(state["kept"], expected)
        assert (state["exp_avg"].dtype, state["exp_avg_sq"].dtype) == (torch.int8, torch.uint8)
        assert state["exp_avg"].shape == expected.shape and state["exp_avg_sq"].any()
        assert state["exp_avg_scale"].shape == state["exp_avg_sq_scale"].shape == (rows * blocks,)
        assert (state["exp_avg_sq_scale"] > 0).all()
    assert spam8["0.bias"]["exp_avg"].dtype == torch.float32 and "kept" not in spam8["0.bias"]
    stable8 = saved["stable8"]["0.weight"]
    assert stable8["exp_avg"].dtype == torch.int8 and stable8["exp_avg"].shape == (37 * 300,)
    assert stable8["exp_avg_scale"].shape == (37 * 2,) and stable8["exp_avg_sq"].any()


def test_export_writes_the_weights_of_a_sharded_checkpoint(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainers.export import main as export

    tmp = runs["tmp"]
    out = export([str(tmp / "sparse" / "checkpoints" / "step_8"), str(tmp_path / "exported")])
    exported = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    final = AutoModelForCausalLM.from_pretrained(str(tmp / "sparse" / "final")).state_dict()
    assert exported.keys() == final.keys()
    for key in final:  # the last checkpoint and the end-of-run folder hold the same weights
        assert torch.equal(exported[key], final[key]), key
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError, match="not empty"):
        export([str(tmp / "sparse" / "checkpoints" / "step_8"), str(out)])


def test_bad_sharded_setups_are_clear_errors(runs):
    tmp, common = runs["tmp"], runs["common"]
    with pytest.raises(ValueError, match="global_batch_size=8 does not split evenly over 3 processes"):
        from trainers.config import TrainConfig

        TrainConfig(global_batch_size=8).per_process_batch(3)
    with pytest.raises(ValueError, match="written in the 'dcp' format .* --fsdp"):
        main([*common, *RUNS["adamw"], "--run-name", "no-fsdp", "--resume",
              str(tmp / "adamw" / "checkpoints" / "step_2")])
    with pytest.raises(ValueError, match="fsdp supports the optimizers spam, stable-spam, adamw"):
        main([*common, "--optimizer", "adafactor", "--fsdp"])
    with pytest.raises(ValueError, match="not a sharded"):
        from trainers.export import export

        export(tmp / "single-adamw" / "checkpoints" / "step_4", tmp / "never")
