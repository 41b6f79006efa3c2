"""Run one training job with ``trainers.pretrain`` and write its speed and losses as a results table.

    python benchmarks/training_run.py --out benchmarks/results/train_llama60m_spam_bf16_cuda.md -- \\
        --model llama-60m --optimizer spam --mixed-precision bf16 --max-steps 200

Everything after ``--`` goes to the trainer as is. The table: device, wall time, median throughput over the
logged steps (the first logging window, which holds compilation and warm-up, left out), first and last
training loss, the last evaluation, and on CUDA the peak memory allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from spam_opt import run_files


def summarize(run_dir: Path, wall_s: float, command: str) -> str:
    """The results table of the finished run in ``run_dir``."""
    rows = [json.loads(line) for line in (run_dir / run_files.METRICS).read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    speeds = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    launch = _yaml(run_dir / run_files.CONFIG).get("launch", {})
    device = launch.get("device", "?")
    if torch.cuda.is_available():
        device += f" ({torch.cuda.get_device_name()})"
    lines = [
        f"Command: `{command}`",
        "",
        f"Device: {device}, {launch.get('num_processes', 1)} process(es), torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores.",
        "",
        "| steps | wall s | tokens/s (median) | first loss | last loss | last eval loss | peak memory GB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if torch.cuda.is_available() else "n/a"
    last_eval = f"{evals[-1]['eval_loss']:.4f}" if evals else "n/a"
    lines.append(f"| {train[-1]['step']} | {wall_s:.0f} | {statistics.median(speeds):.0f} | "
                 f"{train[0]['loss']:.4f} | {train[-1]['loss']:.4f} | {last_eval} | {peak} |")
    return "\n".join(lines) + "\n"


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, trainer_flags = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the results file to write ('-' prints only)")
    args = parser.parse_args(ours)
    from trainers.pretrain import main as pretrain

    start = time.perf_counter()
    run_dir = pretrain(trainer_flags)
    wall = time.perf_counter() - start
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/training_run.py", *argv])
    text = summarize(run_dir, wall, command)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
    return run_dir


if __name__ == "__main__":
    main()
