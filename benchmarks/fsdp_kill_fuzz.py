"""Kill a 2-process FSDP2 run (SIGKILL to its whole process group) at random moments, resume it each time,
and compare the end with the uninterrupted run.

    python benchmarks/fsdp_kill_fuzz.py [--kills 6] [--seed 0] [--out benchmarks/results/fsdp_kill_fuzz.json]

Moments alternate between "mid-training" (once the metrics reach a random step past the resume point, plus
a random 0-50 ms) and "mid-save" (as soon as a `.tmp-step_N` folder of a save past the resume point
appears, i.e. while torch.distributed.checkpoint is writing the shards). After every kill the same
command with `--resume auto` continues. Checks, recorded in the result:

* every resume starts from the newest complete checkpoint (never a `.tmp-` folder);
* after the last kill the run completes, and its losses (every step) and final weights equal the
  uninterrupted run's bit for bit;
* a copy of the run directory taken after a mid-save kill resumes on ONE process from the last complete
  checkpoint and trains to the end (losses equal the 2-process run's up to float32 summation order).

CPU, gloo, a tiny LLaMA with sparse SPAM (resets and clipping inside the run). Times are not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
MAX_STEPS = 40
SAVE_EVERY = 3


def corpus(path: Path) -> Path:
    rng = random.Random(1)
    docs = [" ".join(rng.choice("abcdefgh") * 3 for _ in range(60)) for _ in range(200)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def flags(tmp: Path, name: str) -> list[str]:
    return ["--model", "llama-tiny", "--dataset", str(tmp / "corpus.jsonl"),
            "--cache-dir", str(tmp / "cache"), "--seq-len", "32", "--global-batch-size", "8",
            "--max-steps", str(MAX_STEPS), "--lr-warmup-steps", "2", "--log-every", "1", "--eval-every", "0",
            "--save-every", str(SAVE_EVERY),
            "--keep-checkpoints", "2", "--optimizer", "spam", "--density", "0.5", "--reset-interval", "8",
            "--reset-warmup-steps", "2", "--clip-delay", "1", "--spike-threshold", "2.0", "--fsdp",
            "--output-dir", str(tmp), "--run-name", name, "--no-progress-bar", "--no-dashboard",
            "--trackers", ""]


def launch(argv: list[str], processes: int, log: Path) -> subprocess.Popen:
    """The trainer on ``processes`` processes (torchrun when > 1), its stderr in ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "trainers.pretrain", *argv]
    if processes > 1:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m"]
    # stderr goes to a file: a pipe nobody reads while polling would fill and block the run.
    with log.open("w") as err:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    process.log = log
    return process


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid`` and all its descendants at once, as a job's end does; returns how many processes.

    torchrun starts every worker in a session (process group) of its own, so the launcher's group alone
    would miss them: each group of the tree is killed, children gathered first so that none escapes."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process just ended
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree}
        grew = not found <= tree
        tree |= found
    groups = set()
    for member in tree:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            groups.add(os.getpgid(member))
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    return len(tree)


def logged_steps(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    rows = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if "loss" in row:
            rows[row["step"]] = row["loss"]
    return rows


def complete_checkpoints(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.glob("step_*")) if root.is_dir() else []


def save_moment(run_dir: Path, step: int, since: float) -> str | None:
    """While save ``step`` is being written by the launch started at ``since``; or, had the poll missed that
    window, just after it. (A killed launch leaves its ``.tmp-`` folder: only a fresh one counts.)"""
    for name, moment in ((f".tmp-step_{step}", f"writing step_{step}"),
                         (f"step_{step}", f"just after step_{step} was complete (poll missed the write)")):
        with contextlib.suppress(FileNotFoundError):
            if (run_dir / "checkpoints" / name).stat().st_mtime >= since:
                return moment
    return None


def stderr_tail(process: subprocess.Popen) -> str:
    return process.log.read_text()[-4000:]


def finish(process: subprocess.Popen) -> None:
    process.wait(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"run failed ({process.returncode}):\n{stderr_tail(process)}")


def weights(run_dir: Path) -> bytes:
    return (run_dir / "final" / "model.safetensors").read_bytes()


def fuzz(kills: int, seed: int, tmp: Path) -> dict:
    rng = random.Random(seed)
    corpus(tmp / "corpus.jsonl")
    finish(launch(flags(tmp, "reference"), 2, tmp / "reference.log"))
    reference = logged_steps(tmp / "reference")
    run_dir, events, one_process = tmp / "fuzzed", [], None
    for k in range(kills):
        resume_at = max(complete_checkpoints(run_dir), default=0)
        mode = "mid-save" if k % 2 else "mid-training"
        # Past the steps the killed launch logged (so that only this launch's rows count), and at most
        # two saves past the resume point, so that six kills fit in the run with room to spare.
        logged = max(logged_steps(run_dir), default=0)
        target = rng.randint(logged + 1, logged + 2 * SAVE_EVERY)
        if mode == "mid-save":
            target = (resume_at // SAVE_EVERY + rng.randint(1, 2)) * SAVE_EVERY
        since = time.time()
        process = launch(flags(tmp, "fuzzed") + ["--resume", "auto"], 2, tmp / f"launch-{k + 1}.log")
        moment = None
        while moment is None and process.poll() is None:
            if mode == "mid-save":
                moment = save_moment(run_dir, target, since)
            elif max(logged_steps(run_dir), default=0) >= target:
                time.sleep(rng.uniform(0, 0.05))
                moment = f"after step {target}"
            time.sleep(0.002)
        if process.poll() is not None:
            raise RuntimeError(f"kill {k + 1}: the run ended ({process.returncode}) before its moment "
                               f"({mode}, target {target}):\n{stderr_tail(process)}")
        killed = kill_tree(process.pid)
        process.wait()
        tmp_left = sorted(p.name for p in (run_dir / "checkpoints").glob(".tmp-*"))
        events.append(dict(kill=k + 1, mode=mode, moment=moment, processes_killed=killed,
                           resumed_from_step=resume_at,
                           logged_up_to=max(logged_steps(run_dir), default=0),
                           complete_checkpoints=complete_checkpoints(run_dir), partial_saves_left=tmp_left))
        if mode == "mid-save" and one_process is None and tmp_left:
            copy = tmp / "one-process"
            shutil.copytree(run_dir, copy)
            expected = max(complete_checkpoints(copy))
            finish(launch(flags(tmp, "one-process") + ["--resume", "auto"], 1, tmp / "one-process.log"))
            resumed = yaml.safe_load((copy / "config.yaml").read_text())["launch"]["resumed_from"]
            got = logged_steps(copy)
            one_process = dict(after_kill=k + 1, partial_save=tmp_left, resumed_from=Path(resumed).name,
                               resumed_from_last_complete=Path(resumed).name == f"step_{expected}",
                               completed=sorted(got) == sorted(reference),
                               max_rel_loss_diff=max(abs(got[s] - reference[s]) / abs(reference[s])
                                                     for s in reference))
    finish(launch(flags(tmp, "fuzzed") + ["--resume", "auto"], 2, tmp / "last.log"))
    fuzzed = logged_steps(run_dir)
    return dict(processes=2, max_steps=MAX_STEPS, kills=events, one_process_resume=one_process,
                every_kill_hit_the_launcher_and_both_workers=all(e["processes_killed"] == 3 for e in events),
                losses_equal=fuzzed == reference,
                weights_equal=weights(run_dir) == weights(tmp / "reference"),
                final_loss=reference[MAX_STEPS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fsdp_kill_fuzz.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(args.kills, args.seed, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    ok = result["losses_equal"] and result["weights_equal"] and (result["one_process_resume"] or {}).get(
        "resumed_from_last_complete", False) and result["every_kill_hit_the_launcher_and_both_workers"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
