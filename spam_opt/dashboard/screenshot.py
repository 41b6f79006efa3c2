"""Open a report in headless Chromium (selenium) and save a PNG of it: for the README's picture of a
comparison, and for tests that check a page in a real browser.

    python -m spam_opt.dashboard.screenshot grid/comparison.html comparison.png --width 1400 --height 1600

Needs ``pip install selenium`` and a Chromium with its chromedriver (``apt install chromium
chromium-driver``, or set ``CHROMIUM`` and ``CHROMEDRIVER`` to their paths).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MAX_HEIGHT = 16000  # a full-page picture taller than this is cut there


def _executable(variable: str, names: tuple[str, ...]) -> str:
    found = os.environ.get(variable) or next(filter(None, map(shutil.which, names)), None)
    if not found:
        raise FileNotFoundError(f"no {names[0]} found: install it (e.g. apt install chromium "
                                f"chromium-driver) or set {variable} to its path")
    return found


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A selenium ``webdriver.Chrome`` on headless Chromium, offline, with the browser log recorded; quit
    on exit.

    Example::

        with headless_chromium() as driver:
            driver.get(Path("comparison.html").resolve().as_uri())
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise ImportError("opening a report in a browser needs selenium: pip install selenium") from exc
    chromium = _executable("CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))
    driver_path = _executable("CHROMEDRIVER", ("chromedriver",))
    with tempfile.TemporaryDirectory(prefix="spam-dashboard-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_plots(driver: Any, timeout_s: float = 60.0) -> None:
    """Wait until every plot on the page has been drawn by plotly."""
    from selenium.webdriver.support.ui import WebDriverWait

    drawn = ("return Array.from(document.querySelectorAll('.plotly-graph-div'))"
             ".every(d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg'))")
    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script(drawn))


def screenshot(page: str | Path, png: str | Path, *, width: int = 1400, height: int | None = None) -> Path:
    """Save a PNG of ``page`` (an HTML file) as drawn at ``width`` pixels: its top ``height`` pixels, or
    the whole page (up to ``MAX_HEIGHT``) when ``height`` is None.

    Example::

        screenshot("grid/comparison.html", "docs/comparison.png", height=1600)
    """
    page, png = Path(page), Path(png)
    if not page.is_file():
        raise FileNotFoundError(f"no report at {page}: render one first (spam-dashboard RUN_DIR ...)")
    with headless_chromium(width, height or 1000) as driver:
        driver.get(page.resolve().as_uri())
        wait_for_plots(driver)
        if height is None:
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(int(full) + 150, MAX_HEIGHT))  # + the window's own frame
            wait_for_plots(driver)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(driver.get_screenshot_as_png())
    return png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spam_opt.dashboard.screenshot",
                                     description="Save a PNG of a report drawn by headless Chromium.")
    parser.add_argument("page", type=Path, help="the report (an HTML file from spam-dashboard)")
    parser.add_argument("png", type=Path, help="where to write the picture")
    parser.add_argument("--width", type=int, default=1400, help="window width in pixels (default: 1400)")
    parser.add_argument("--height", type=int, default=None,
                        help="the top HEIGHT pixels of the page (default: the whole page)")
    args = parser.parse_args(argv)
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and not 100 <= value <= MAX_HEIGHT:
            parser.error(f"--{name} {value} is out of range: give pixels from 100 to {MAX_HEIGHT}")
    try:
        print(screenshot(args.page, args.png, width=args.width, height=args.height))
    except (FileNotFoundError, ImportError) as err:
        print(f"screenshot: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
