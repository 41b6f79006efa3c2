#!/usr/bin/env bash
# Creates .venv (torch first, from the local CPU wheel) and installs the project with its dev extras.
# Idempotent: a second call only re-checks. Also installs Debian's Chromium for the dashboard's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "warning: could not install chromium; the dashboard browser test will say why it skips" >&2
fi
