"""The run report: ``render_dashboard(run_dir)`` and the ``spam-dashboard`` command (needs plotly)."""

from spam_opt.dashboard.render import render_dashboard

__all__ = ["render_dashboard"]
