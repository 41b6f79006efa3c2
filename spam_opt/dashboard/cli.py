"""``spam-dashboard RUN_DIR [RUN_DIR ...] [-o report.html] [--watch]``: render (and keep re-rendering) the
report of a run, or one page comparing several runs (also every run under a folder)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from spam_opt import run_files as rf
from spam_opt.dashboard.compare import render_comparison
from spam_opt.dashboard.render import render_dashboard
from spam_opt.dashboard.runs import find_runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spam-dashboard",
        description="Render the gradient-spike report of a run directory, or a comparison of several runs, "
                    "as one self-contained HTML file (works offline).")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help=f"directory holding {rf.METRICS} and {rf.SPIKES}, or a folder of such run "
                             "directories; several runs are compared on one page")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help=f"where to write the report (default: RUN_DIR/{rf.DASHBOARD} for one run, "
                             f"FOLDER/{rf.COMPARISON} for a folder of runs, ./{rf.COMPARISON} for several "
                             "paths)")
    parser.add_argument("--title", default=None, help="heading of a comparison (default: how many runs)")
    parser.add_argument("--watch", action="store_true",
                        help="re-render whenever the runs' logs change, until interrupted (Ctrl-C)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between checks for changes with --watch (default: 5)")
    return parser


def _single(paths: list[Path]) -> bool:
    """One path that is a run directory, or holds no run directory at all: the single-run report."""
    return len(paths) == 1 and find_runs(paths[0]) in ([], [paths[0]])


def _runs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    runs: list[Path] = []
    warnings = []
    for path in paths:
        found = find_runs(path)
        if not found:
            warnings.append(f"no run directory (a folder holding {rf.METRICS}) at or under {path}")
        runs += [r for r in found if r not in runs]
    return runs, warnings


def _fingerprint(paths: list[Path]) -> tuple[object, ...]:
    """What changes when a run logs a row or a new run starts."""
    stats = []
    for run_dir in [r for p in paths for r in find_runs(p) or [p]]:
        for name in rf.LOGS:
            try:
                st = (run_dir / name).stat()
                stats.append((str(run_dir), st.st_mtime_ns, st.st_size))
            except OSError:
                stats.append((str(run_dir), 0, -1))
    return tuple(stats)


def _render(args: argparse.Namespace, refresh_s: float | None = None) -> Path | None:
    """Write the report; None when there is nothing to write yet (a run directory not created)."""
    paths = args.run_dirs
    if _single(paths):
        if not paths[0].is_dir() and args.output is None:
            return None
        return render_dashboard(paths[0], args.output, refresh_s=refresh_s)
    runs, warnings = _runs(paths)
    output = args.output or (paths[0] / rf.COMPARISON if len(paths) == 1 else Path(rf.COMPARISON))
    return render_comparison(runs, output, title=args.title, refresh_s=refresh_s, warnings=warnings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"invalid --interval {args.interval}: it must be a positive number of seconds")
    logging.basicConfig(level=logging.WARNING, format="spam-dashboard: warning: %(message)s")
    if not args.watch:
        if _single(args.run_dirs) and not args.run_dirs[0].is_dir() and args.output is None:
            parser.error(f"no run directory at {args.run_dirs[0]}: give the directory the training run "
                         "writes to, or -o to write a report elsewhere")
        if not _single(args.run_dirs) and not _runs(args.run_dirs)[0]:
            parser.error(f"no run directory (a folder holding {rf.METRICS}) at or under "
                         f"{', '.join(map(str, args.run_dirs))}")
    try:
        import plotly  # noqa: F401
    except ImportError:
        print("spam-dashboard: error: plotly is missing; install it with: pip install spam-opt[dashboard]",
              file=sys.stderr)
        return 1
    if not args.watch:
        print(_render(args))
        return 0
    # Ctrl-C (or SIGTERM) sets a flag rather than raising inside a render: an interrupt raised in the
    # middle of a library's import or output code can be swallowed there, and the watch would go on.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen = None
    try:
        while not stop.is_set():
            current = _fingerprint(args.run_dirs)
            if current != seen and (path := _render(args, refresh_s=max(args.interval, 2.0))) is not None:
                print(f"rendered {path}", flush=True)
                seen = current
            stop.wait(args.interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped watching", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
