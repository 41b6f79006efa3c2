"""The grids' one command line: the options every grid shares, their checks, ``--quick``, ``--report-only``.

Each grid script (``stability.py``, ``lowbit.py``, ``memory_grid.py``) describes itself in a
:class:`GridScript` (its rows, its regimes, how its learning rates are chosen, its report) and its
``main`` is :func:`main` on it:

    python -m benchmarks.stability --steps 200 --batch-size 8 --seq-len 64      # a grid, lr swept
    python -m benchmarks.lowbit --quick                                         # a pipeline check
    python -m benchmarks.memory_grid --report-only    # the report again from finished or committed runs
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import grid, provenance
from benchmarks.grid import Regime, Setup

# --quick: a pipeline check on the smallest model, a few steps and one seed, in runs/smoke/<results>.
QUICK = {"model": "llama-tiny", "steps": 6, "seeds": 1, "batch_size": 2, "seq_len": 32, "corpus_mb": 0.2}
QUICK_EVAL_BATCHES = 2
QUICK_LR = 1e-3


@dataclass
class GridScript:
    """What a grid script adds to the shared command line.

    ``variants(args)`` and ``regimes(args)`` give every row and regime the script knows; ``rows_flag`` names
    the option that picks rows (``--optimizers`` or ``--variants``); ``fixed_lr(args)``, when given, is every
    row's lr (no sweep, no ``--lrs``); ``report(setup, args, variants, results, command)`` writes the report
    and returns what ``main`` returns. ``prepare(setup, args, variants)`` may complete the variants before
    any run (the memory grid's GaLore rank); ``check(args, parser)`` adds the script's own checks.

        >>> GridScript("stability", "Stability benchmark", 300, 128, "--optimizers", lambda a: {},
        ...            lambda a: {}, "adamw", lambda *a: None).results
        'benchmarks/results/stability'
    """

    module: str
    description: str
    steps: int
    seq_len: int
    rows_flag: str
    variants: Callable[[argparse.Namespace], dict[str, dict[str, Any]]]
    regimes: Callable[[argparse.Namespace], dict[str, Regime]]
    reference: str  # the row whose lr a high-lr regime scales
    report: Callable[..., Any]
    results_name: str = ""  # the folder under benchmarks/results (default: the module's name)
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    fixed_lr: Callable[[argparse.Namespace], float] | None = None
    quick: dict[str, Any] = field(default_factory=dict)  # the script's own --quick settings
    setup_extra: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    prepare: Callable[[Setup, argparse.Namespace, dict[str, dict[str, Any]]], None] | None = None
    check: Callable[[argparse.Namespace, argparse.ArgumentParser], None] = lambda args, parser: None

    @property
    def results(self) -> str:
        return f"benchmarks/results/{self.results_name or self.module}"


def _names(text: str, flag: str, kind: str, known: Any, parser: argparse.ArgumentParser) -> list[str]:
    given = [x for x in text.split(",") if x]
    if not given:
        parser.error(f"{flag} is empty: give a comma-separated list of some of {', '.join(known)}")
    unknown = [x for x in given if x not in known]
    if unknown:
        parser.error(f"{flag}: unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return given


def parser_for(script: GridScript) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{script.module}",
                                     description=script.description)
    parser.add_argument("--model", default="llama-9m")
    parser.add_argument("--steps", type=int, default=script.steps)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=script.seq_len)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corpus-mb", type=float, default=2.0)
    parser.add_argument("--reset-fraction", type=float, default=1 / 20,
                        help="SPAM reset interval as a fraction of the run (paper: 500 of ~10k steps)")
    parser.add_argument(script.rows_flag, help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--regimes", help="comma-separated subset of the regimes (default: all)")
    if script.fixed_lr is None:
        parser.add_argument("--lrs", default="",
                            help="NAME=LR,... : learning rates to use instead of sweeping for those rows")
    parser.add_argument("--out", default=None,
                        help=f"results folder (default: {script.results}; with --quick, "
                             f"runs/smoke/{script.results_name or script.module}, so that a smoke test never "
                             "replaces committed results)")
    parser.add_argument("--quick", action="store_true", help="one seed, 6 steps of llama-tiny, no lr sweep")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the runs that have finished (their run "
                             "folders, else the committed results.json) and list the others in missing.md "
                             "(every row needs its lr: from --lrs or a finished sweep)")
    script.add_arguments(parser)
    return parser


def main(script: GridScript, argv: list[str] | None = None) -> Any:
    """Parse ``argv``, train the grid's missing runs (unless ``--report-only``) and write its report."""
    parser = parser_for(script)
    args = parser.parse_args(argv)
    for flag in ("steps", "batch_size", "seq_len", "seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"invalid --{flag.replace('_', '-')} {getattr(args, flag)}: it must be at least 1")
    if args.corpus_mb < 0 or not 0 < args.reset_fraction <= 1:
        parser.error("--corpus-mb must be >= 0 (0: the whole corpus) and --reset-fraction in (0, 1]")
    script.check(args, parser)
    if args.quick:
        for key, value in (QUICK | script.quick).items():
            setattr(args, key, value)
    table, all_regimes = script.variants(args), script.regimes(args)
    rows_text = getattr(args, script.rows_flag[2:].replace("-", "_"))
    names = _names(",".join(table) if rows_text is None else rows_text, script.rows_flag,
                   script.rows_flag[2:-1], table, parser)
    chosen = _names(",".join(all_regimes) if args.regimes is None else args.regimes, "--regimes", "regime",
                    all_regimes, parser)
    given_lrs = {} if script.fixed_lr else grid.parse_lrs(args.lrs, list(table), parser)
    name = script.results_name or script.module
    setup = Setup(args.model, args.steps, args.batch_size, args.seq_len,
                  Path(args.out or (f"runs/smoke/{name}" if args.quick else script.results)),
                  args.reset_fraction, args.corpus_mb, args.seeds, script.setup_extra(args),
                  QUICK_EVAL_BATCHES if args.quick else grid.WHOLE_SPLIT)
    setup.out.mkdir(parents=True, exist_ok=True)
    variants = {k: dict(v) for k, v in table.items()}
    if script.prepare is not None:
        script.prepare(setup, args, variants)
    chosen_variants = {n: variants[n] for n in names}
    train = not args.report_only
    if script.fixed_lr is not None:
        lrs = {n: script.fixed_lr(args) for n in variants}
    elif args.quick:
        lrs = {n: QUICK_LR for n in names}
    else:
        to_sweep = [n for n in names if n not in given_lrs]
        swept = grid.sweep(setup, chosen_variants, to_sweep, Regime(), train=train) if to_sweep else {}
        lrs = given_lrs | swept
    regimes = {r: all_regimes[r] for r in chosen}
    if any(r.lr_factor for r in regimes.values()) and script.reference not in lrs:
        parser.error(f"a high-lr regime scales {script.reference}'s lr: include {script.reference} in "
                     f"{script.rows_flag}, or in --lrs")
    results = grid.run_grid(setup, chosen_variants, regimes, lrs, reference=script.reference, train=train)
    command = provenance.module_command(script.module, argv, drop=("--report-only",))
    return script.report(setup, args, variants, results, command)
