"""Preemption and faults: a signal or a time limit saves and exits, and resuming is exact; two processes
stop at the same step whichever got the signal; a full disk, a bad data record and a diverged loss stop
with a clear error and lose nothing."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from letters_corpus import write_letters_corpus

from trainers import data
from trainers.checkpointing import DiskFullError, checkpoints, verify
from trainers.data import BadRecordError
from trainers.divergence import Diverged
from trainers.preemption import RunStopped
from trainers.pretrain import main

ROOT = Path(__file__).parents[1]
SLOW = Path(__file__).parent / "workers" / "slow_trainer.py"
# A script's own folder comes first on its path: the trainer must still be this checkout's.
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_letters_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-cache"))


def flags(tmp: Path, corpus: Path, cache_dir: str, name: str, *extra: str) -> list[str]:
    return ["--model", "llama-tiny", "--dataset", str(corpus), "--cache-dir", cache_dir, "--seq-len", "32",
            "--batch-size", "4", "--max-steps", "10", "--lr-warmup-steps", "2", "--lr", "3e-3",
            "--log-every", "1", "--eval-every", "0", "--save-every", "4", "--output-dir", str(tmp),
            "--run-name", name, "--no-progress-bar", "--no-dashboard", "--trackers", "", *extra]


@pytest.fixture
def run(tmp_path, corpus, cache_dir):
    return lambda name, *extra: main(flags(tmp_path, corpus, cache_dir, name, *extra))


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and max(losses(run_dir), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} did not reach step {step}")


def test_sigterm_saves_exits_with_the_requeue_code_and_resumes_exactly(tmp_path, corpus, cache_dir, run):
    reference = losses(run("whole"))
    argv = flags(tmp_path, corpus, cache_dir, "signalled", "--requeue-exit-code", "42")
    env = ENV
    process = subprocess.Popen([sys.executable, str(SLOW), "0.3", str(tmp_path / "pids"), *argv], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "signalled"
    wait_for_step(run_dir, 2, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 42, err[-3000:]
    stopped = max(losses(run_dir))
    assert 2 <= stopped < 10 and f"stopped at step {stopped} of 10 (SIGTERM received)" in err
    assert checkpoints(run_dir)[0].name == f"step_{stopped}" and not (run_dir / "final").exists()
    assert losses(run("signalled", "--resume", "auto")) == reference  # exact float equality, every step


def test_a_second_signal_while_saving_leaves_the_checkpoint_whole(run, tmp_path, monkeypatch):
    from accelerate import Accelerator

    original_get, original_save = data.BlockBatches.__getitem__, Accelerator.save_state
    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's, under nohup or `&`

    def signal_at_step_3(self, index):
        if self.shuffle and index == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled as soon as this returns: step 3 finishes
        return original_get(self, index)

    def signalled_again(self, output_dir=None, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # mid-save: must not interrupt it
        return original_save(self, output_dir, **kwargs)

    monkeypatch.setattr(data.BlockBatches, "__getitem__", signal_at_step_3)
    monkeypatch.setattr(Accelerator, "save_state", signalled_again)
    with pytest.raises(RunStopped) as stop:
        run("twice")
    assert (stop.value.code, stop.value.step, stop.value.reason) == (0, 3, "SIGUSR1 received")
    (ckpt,) = checkpoints(tmp_path / "twice")
    assert ckpt.name == "step_3" and verify(ckpt) is None
    assert signal.getsignal(signal.SIGINT) == sigint_before  # the handlers are given back


def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, corpus, cache_dir):
    argv = flags(tmp_path, corpus, cache_dir, "two", "--fsdp", "--log-every", "2", "--max-steps", "30",
                 "--save-every", "0")
    argv[argv.index("--batch-size"):argv.index("--batch-size") + 2] = ["--global-batch-size", "8"]
    env = dict(ENV, ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SLOW),
           "0.3", str(tmp_path / "pids"), *argv]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    run_dir = tmp_path / "two"
    wait_for_step(run_dir, 3, process)
    os.kill(int((tmp_path / "pids" / "rank_1").read_text()), signal.SIGUSR1)  # not the main process
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    (ckpt,) = checkpoints(run_dir)
    step = int(ckpt.name.removeprefix("step_"))
    assert step % 2 == 0 and max(losses(run_dir)) == step  # agreed at a logging step, both stopped there
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(manifest["files"])  # both processes wrote their shards
    assert "a signal received by another process" in err and "SIGUSR1 received" in err


def test_a_sharded_run_killed_mid_save_resumes_on_one_process_from_the_last_complete_checkpoint(
        tmp_path, corpus, cache_dir):
    """The small version of benchmarks/fsdp_kill_fuzz.py: SIGKILL to torchrun and both workers while the
    shards of step 4 are on disk but the checkpoint is not complete; one process continues from step 2."""
    from benchmark_scripts import load

    fuzz = load("fsdp_kill_fuzz")
    argv = flags(tmp_path, corpus, cache_dir, "sharded", "--fsdp", "--save-every", "2", "--max-steps", "6")
    argv[argv.index("--batch-size"):argv.index("--batch-size") + 2] = ["--global-batch-size", "8"]
    env = dict(ENV, ACCELERATE_USE_CPU="true", SLOW_SAVE="30")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SLOW),
           "0", str(tmp_path / "pids"), *argv]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    partial = tmp_path / "sharded" / "checkpoints" / ".tmp-step_4"
    deadline = time.monotonic() + 240
    while not (partial / "__1_0.distcp").is_file() and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # both shards written; the save waits before its manifest
    assert fuzz.kill_tree(process.pid) == 3
    process.wait(timeout=30)
    run_dir = tmp_path / "sharded"
    assert [p.name for p in checkpoints(run_dir)] == ["step_2"] and partial.is_dir()
    two_processes = losses(run_dir)
    resumed = main(argv + ["--resume", "auto"])
    launch = yaml.safe_load((resumed / "config.yaml").read_text())["launch"]
    assert launch["resumed_from"].endswith("step_2") and launch["num_processes"] == 1
    one_process = losses(resumed)
    assert sorted(one_process) == list(range(1, 7))
    after_checkpoint = sorted(set(two_processes) - {1, 2})
    assert after_checkpoint[0] == 3
    for step in after_checkpoint:  # trained by both: equal up to float32 summation order
        assert one_process[step] == pytest.approx(two_processes[step], rel=1e-5)


def test_a_time_limit_saves_and_exits_before_it_runs_out(run, tmp_path, monkeypatch):
    original = data.BlockBatches.__getitem__

    def slow(self, index):
        if self.shuffle:
            time.sleep(0.25)
        return original(self, index)

    monkeypatch.setattr(data.BlockBatches, "__getitem__", slow)
    start = time.monotonic()
    with pytest.raises(RunStopped) as stop:
        run("timed", "--max-steps", "1000", "--time-limit", "10s", "--requeue-exit-code", "3")
    assert time.monotonic() - start < 10
    assert stop.value.code == 3 and "time limit" in stop.value.reason and 1 <= stop.value.step < 1000
    assert checkpoints(tmp_path / "timed")[0].name == f"step_{stop.value.step}"


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_space_needed(run, tmp_path, monkeypatch):
    from accelerate import Accelerator

    original, calls = Accelerator.save_state, []

    def disk_fills_on_second_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        original(self, output_dir, **kwargs)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_fills_on_second_save)
    with pytest.raises(DiskFullError) as err:
        run("full")
    root = tmp_path / "full" / "checkpoints"
    message = str(err.value)
    assert str(root) in message and "step 8" in message and "bytes" in message and "\n" not in message
    size = sum(p.stat().st_size for p in (root / "step_4").rglob("*") if p.is_file())
    assert f"about {size} bytes (the size of step_4)" in message
    (ckpt,) = checkpoints(tmp_path / "full")
    assert ckpt.name == "step_4" and verify(ckpt) is None and not (root / ".tmp-step_8").exists()


def test_a_bad_data_record_is_an_error_naming_the_line_or_is_skipped_and_counted(run, tmp_path, corpus):
    lines = corpus.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    broken = [b'{"text": "caf\xe9"}\n', b'{"text": \n']  # Latin-1, not UTF-8; cut JSON
    bad.write_bytes(b"".join(lines[:4] + broken[:1] + lines[4:9] + broken[1:] + lines[9:]))
    with pytest.raises(BadRecordError, match=f"{bad}, line 5: the record is not valid UTF-8"):
        run("bad", "--dataset", str(bad))
    run_dir = run("skipped", "--dataset", str(bad), "--skip-bad-records", "--max-steps", "2")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_records"] for r in rows if "skipped_records" in r] == [2.0]


def test_a_loss_that_stays_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(run, tmp_path,
                                                                                      monkeypatch):
    from spam_opt.monitor.injector import SpikeInjector

    original = SpikeInjector.__init__

    def nan_factor(self, *args, **kwargs):  # a NaN gradient, as an fp16 overflow makes one
        original(self, *args, **kwargs)
        self.factor = float("nan")

    monkeypatch.setattr(SpikeInjector, "__init__", nan_factor)
    # The NaN gradient of step 3 makes AdamW's weights NaN: every loss from step 4 on is NaN.
    with pytest.raises(Diverged, match="not finite for 3 consecutive steps .up to step 6") as err:
        run("nan", "--optimizer", "adamw", "--inject-spike-steps", "3", "--max-bad-steps", "3",
            "--save-every", "2", "--dashboard")
    run_dir = tmp_path / "nan"
    assert str(checkpoints(run_dir)[0]) in str(err.value)
    assert [p.name for p in checkpoints(run_dir)] == ["step_2"]  # step 4 and 6 were not saved
    assert (run_dir / "dashboard.html").is_file()


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (killed, waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_kill_fuzz_kills_every_process_of_the_tree_even_in_other_sessions():
    from benchmark_scripts import load

    fuzz = load("fsdp_kill_fuzz")
    # A parent whose child runs in a session of its own, as torchrun starts its workers.
    child = "import time; time.sleep(60)"
    code = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', {child!r}], "
            "start_new_session=True); print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child_pid = int(parent.stdout.readline())
    assert running(child_pid) and os.getpgid(child_pid) != os.getpgid(parent.pid)
    assert fuzz.kill_tree(parent.pid) == 2 and parent.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child_pid)


def test_the_committed_kill_fuzz_result_holds():
    """benchmarks/results/fsdp_kill_fuzz.json, as docs/training.md quotes it."""
    result = json.loads((ROOT / "benchmarks" / "results" / "fsdp_kill_fuzz.json").read_text())
    kills = result["kills"]
    assert len(kills) == 6 and result["every_kill_hit_the_launcher_and_both_workers"]
    assert sum(bool(k["partial_saves_left"]) and k["moment"].startswith("writing") for k in kills) == 3
    assert result["losses_equal"] and result["weights_equal"]
    one = result["one_process_resume"]
    assert one["resumed_from_last_complete"] and one["completed"] and one["max_rel_loss_diff"] < 1e-5
