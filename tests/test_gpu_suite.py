"""benchmarks/gpu_suite.sh without CUDA: the one-line skip, the argument handling, the commands it runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import benchmark_scripts
import torch

ROOT = Path(__file__).parents[1]


def suite(*args: str) -> subprocess.CompletedProcess:
    # No GPU is visible even on a GPU machine: these tests must never start the real suite.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    done = suite()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["gpu_suite: no CUDA device (torch.cuda.is_available() is False): "
                                        "nothing to run"]


def test_bad_arguments_are_usage_errors_before_anything_runs():
    parts = "the parts are tests, step, train and spikegpt"
    for args, message in ((["--only", "bench"], f"--only bench: {parts}"),
                          (["--only"], "--only needs a part"),
                          (["--train-steps", "0"], "--train-steps needs a positive integer"),
                          (["--fast"], "unknown argument --fast")):
        done = suite(*args)
        assert done.returncode == 2, args
        assert done.stderr.startswith(f"gpu_suite: {message}") and "usage:" in done.stderr, done.stderr
    helped = suite("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage:")


def test_dry_run_prints_the_parts_asked_for():
    commands = [line[2:] for line in suite("--dry-run").stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 5
    # The tests marked cuda, and SpikeGPT's Triton tests (on the GPU there, in the interpreter here).
    assert shlex.split(commands[0])[:4] == [sys.executable, "-m", "pytest", "-m"]
    assert shlex.split(commands[0])[4] == "cuda or triton"
    # every test file that marks tests cuda or triton, and only those
    marked = sorted(f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")
                    if re.search(r"pytest\.mark\.(cuda|triton)\b", path.read_text()))
    listed = [arg for arg in shlex.split(commands[0]) if arg.startswith("tests/")]
    assert sorted(listed) == marked and marked
    step = shlex.split(commands[1])
    assert step[step.index("--device") + 1] == "cuda" and step[step.index("--sizes") + 1] == "130m,350m"
    assert "--model llama-60m --optimizer spam --mixed-precision bf16 --max-steps 200" in commands[2]
    assert "spikegpt_triton_kernels.py --device cuda" in commands[3]
    assert "spikegpt_throughput.py --device cuda --reference" in commands[4]
    assert all("--output benchmarks/results/spikegpt_" in command for command in commands[3:])
    only = suite("--dry-run", "--only", "train", "--train-steps", "7").stdout.splitlines()
    assert len(only) == 1 and "--max-steps 7" in only[0]

    # The step part times our optimizers' default, foreach and Triton steps against the baseline: no peer's.
    bench = benchmark_scripts.load("optimizer_step")
    pattern = re.compile(step[step.index("--only") + 1])
    timed = [name for name in bench.optimizers(False, hidden=256, heads=4, device_type="cuda")
             if pattern.search(name)]
    assert len(timed) == 16 and all(name.startswith(("SPAM", "Stable-SPAM")) for name in timed)
    assert sum("(Triton)" in name for name in timed) == 6
    assert set(step[step.index("--sizes") + 1].split(",")) <= set(bench.SIZES)


def test_the_triton_kernel_benchmark_runs_and_agrees_with_float64(capsys):
    """The spikegpt part's kernel benchmark on a tiny shape, without a GPU on CPU in Triton's interpreter
    (conftest.py): every row within float32 rounding of the float64 reference paths, no spike flipped."""
    bench = benchmark_scripts.load("spikegpt_triton_kernels")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bench.main(["--device", device, "--preset", "spikegpt-tiny", "--batch-size", "2", "--tokens", "8",
                "--rounds", "1", "--output", "-"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| spikegpt-tiny")]
    assert [(row[1].strip(), row[2].split()[0]) for row in rows] == [
        ("WKV", "Triton"), ("WKV", "reference"), ("LIF", "Triton"), ("LIF", "reference")]
    assert all(float(row[3]) < 1e-5 for row in rows)
    assert [row[4].strip() for row in rows[2:]] == ["0 of 1024"] * 2
