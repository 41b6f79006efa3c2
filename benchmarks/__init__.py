"""Benchmark scripts and the grids' shared runner; run each from the repository root as a module.

    python -m benchmarks.stability --steps 200 --batch-size 8 --seq-len 64
    python -m benchmarks.quant_cost

``grid`` runs a grid of training runs, ``grid_command`` is the grids' one command line, ``provenance``
records the commit and command a result came from, ``machine_load`` watches the machine while a script times.
"""
