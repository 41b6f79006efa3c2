"""``spam-dashboard RUN_DIR [-o report.html] [--watch]``: render (and keep re-rendering) a run's report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from spam_opt.dashboard.render import render_dashboard


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spam-dashboard",
        description="Render the gradient-spike report of a run directory as one self-contained HTML file "
                    "(works offline).")
    parser.add_argument("run_dir", type=Path, help="directory holding metrics.jsonl and spikes.jsonl")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write the report (default: RUN_DIR/dashboard.html)")
    parser.add_argument("--watch", action="store_true",
                        help="re-render whenever the run's logs change, until interrupted (Ctrl-C)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between checks for changes with --watch (default: 5)")
    return parser


def _fingerprint(run_dir: Path) -> tuple[tuple[int, int], ...]:
    stats = []
    for name in ("metrics.jsonl", "spikes.jsonl"):
        try:
            st = (run_dir / name).stat()
            stats.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((0, -1))
    return tuple(stats)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.interval <= 0:
        _parser().error(f"invalid --interval {args.interval}: it must be a positive number of seconds")
    logging.basicConfig(level=logging.WARNING, format="spam-dashboard: warning: %(message)s")
    if not args.run_dir.is_dir() and args.output is None and not args.watch:
        _parser().error(f"no run directory at {args.run_dir}: give the directory the training run writes to, "
                        "or -o to write a report elsewhere")
    try:
        import plotly  # noqa: F401
    except ImportError:
        print("spam-dashboard: error: plotly is missing; install it with: pip install spam-opt[dashboard]",
              file=sys.stderr)
        return 1
    if not args.watch:
        print(render_dashboard(args.run_dir, args.output))
        return 0
    seen = None
    try:
        while True:
            current = _fingerprint(args.run_dir)
            if current != seen and (args.run_dir.is_dir() or args.output is not None):
                path = render_dashboard(args.run_dir, args.output, refresh_s=max(args.interval, 2.0))
                print(f"rendered {path}", flush=True)
                seen = current
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print("stopped watching", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
