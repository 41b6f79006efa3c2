"""Run reports (needs plotly): ``render_dashboard(run_dir)`` for one run, ``render_comparison(runs, output)``
for several on one page, and the ``spam-dashboard`` command for both."""

from spam_opt.dashboard.compare import render_comparison
from spam_opt.dashboard.render import render_dashboard
from spam_opt.dashboard.runs import RunRef, find_runs

__all__ = ["RunRef", "find_runs", "render_comparison", "render_dashboard"]
