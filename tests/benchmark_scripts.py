"""The benchmark scripts, loaded as modules for their tests.

The grid scripts and the modules they share are the package ``benchmarks`` (``import benchmarks.stability``);
a few scripts still import their neighbours by bare name (``from machine_load import ...``) and run as files
(``python benchmarks/optimizer_step.py``): :func:`load` gives those with their folder importable, as when
they run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# Scripts that import ``benchmarks.<name>``: loaded as members of the package.
PACKAGED = {"grid", "grid_command", "provenance", "stability", "lowbit", "memory_grid", "eval_noise",
            "machine_load", "quant_cost", "rerun_cell", "spikegpt_kernel_cell", "length_grid",
            "detector_recall", "monitor_overhead"}


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, importable the way the script imports its neighbours."""
    if name in PACKAGED:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        return importlib.import_module(f"benchmarks.{name}")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
