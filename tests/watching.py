"""``spam-dashboard --watch`` in a subprocess, for the dashboard tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def watching(*paths: str) -> Iterator[subprocess.Popen]:
    """Run ``spam-dashboard PATHS --watch`` (checking every 0.2 s); on exit stop it with Ctrl-C and check
    that it ended cleanly. Read its ``stdout`` lines ("rendered PATH") to wait for each render."""
    proc = subprocess.Popen([sys.executable, "-m", "spam_opt.dashboard.cli", *paths, "--watch",
                             "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
