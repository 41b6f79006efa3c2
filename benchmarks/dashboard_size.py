"""What a comparison page weighs, and how fast headless Chromium opens it: RUNS runs of STEPS steps, logged by
the real monitor and optimizers.

    python benchmarks/dashboard_size.py                                   # 20 runs of 1000 steps: the size
    python benchmarks/dashboard_size.py --runs 100 --distinct 10 --open 5 # 100 runs: seconds to interactive
    python benchmarks/dashboard_size.py --runs 2 --steps 30 --open 1      # smoke test

Each run holds the parameters of ``--model`` (built by trainers.models) and takes random gradients, 1000x
on a few tensors every 97th step, through SPAM or AdamW (alternately; the seeds of one optimizer are a
group); ``GradientSpikeMonitor`` logs every step, as the stability grid does, with an eval row every 100
steps and a ``config.yaml``. No training happens: only the logs' shape matters for the page. With
``--distinct K`` only K runs are logged and the others are copies of them (the page's size and drawing time
depend on the logs' shape, not on their values; logging 100 runs would take most of the time).

``--open N`` loads the page N times in headless Chromium (selenium) and reports the time from the start of
the navigation until every panel is drawn and answers the controls (the page's ``spam-dashboard-ready``
performance mark), as measured by the browser. ``--out FILE`` writes the results as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def synthesize(run_dir: Path, model_name: str, optimizer: str, steps: int, seed: int) -> None:
    from spam_opt import run_files
    from spam_opt.monitor import GradientSpikeMonitor
    from spam_opt.spam import SPAM
    from spam_opt.state_bytes import state_bytes
    from trainers.config import TrainConfig, save_config
    from trainers.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, 259, 128)
    params = list(model.parameters())
    interval = max(4, steps // 20)
    opt = (SPAM(params, lr=1e-3, reset_interval=interval, warmup_steps=max(1, interval // 3), clip_delay=2)
           if optimizer == "spam" else torch.optim.AdamW(params, lr=1e-3))
    monitor = GradientSpikeMonitor(model, opt, run_dir=run_dir, log_every=1)
    for step in range(1, steps + 1):
        for i, p in enumerate(params):
            p.grad = torch.randn_like(p) * (1000.0 if step % 97 == 0 and i % 10 == 0 else 1e-3)
        loss = 3.0 * math.exp(-step / steps) + 2.0 + 0.05 * torch.randn(()).item()
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        monitor.observe(step, loss=loss, scalars={"lr": lr, "tokens_per_s": 20000.0 + 100 * math.sin(step)})
        opt.step()
        if step == 1:
            monitor.log_scalars(step, {"optimizer_state_bytes": state_bytes(opt)})
        if step % 100 == 0 or step == steps:
            monitor.log_scalars(step, {"eval_loss": loss + 0.1, "eval_ppl": math.exp(loss + 0.1)})
    monitor.close()
    cfg = TrainConfig(model=model_name, optimizer=optimizer, max_steps=steps, seed=seed)
    save_config(cfg, run_dir / run_files.CONFIG, {"num_processes": 1})


def open_times_s(page: Path, loads: int) -> list[float]:
    """Seconds from navigation start to the page's ``spam-dashboard-ready`` mark, per load."""
    from selenium.webdriver.support.ui import WebDriverWait

    from spam_opt.dashboard.screenshot import headless_chromium

    mark = "return performance.getEntriesByName('spam-dashboard-ready').map(e => e.startTime)[0]"
    times = []
    with headless_chromium(1400, 1000) as driver:
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(page.resolve().as_uri())
            ready = WebDriverWait(driver, 120, poll_frequency=0.05).until(lambda d: d.execute_script(mark))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            if errors:
                raise RuntimeError(f"the page logged errors in Chromium: {errors}")
            times.append(ready / 1000)
    return times


def chromium_version() -> str:
    import subprocess

    from spam_opt.dashboard.screenshot import _executable

    chromium = _executable("CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))
    return subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--model", default="llama-9m")
    parser.add_argument("--distinct", type=int, default=None,
                        help="log only this many runs, the others are copies of them (default: all)")
    parser.add_argument("--open", type=int, default=0, metavar="N",
                        help="load the page N times in headless Chromium, timed (default: 0, not opened)")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs and page here (kept)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as Markdown here")
    args = parser.parse_args(argv)
    distinct = args.distinct or args.runs
    if args.runs < 1 or args.steps < 2 or not 1 <= distinct <= args.runs or args.open < 0:
        parser.error("--runs must be >= 1, --steps >= 2, --distinct from 1 to --runs and --open >= 0")
    from plotly.offline import get_plotlyjs

    from spam_opt import run_files
    from spam_opt.dashboard import RunRef, render_comparison, render_dashboard

    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="dashboard-size-"))
    refs = []
    for k in range(args.runs):
        optimizer = ("spam", "adamw")[k % 2]
        run_dir = root / f"{optimizer}-seed{k // 2}"
        if k < distinct:
            synthesize(run_dir, args.model, optimizer, args.steps, seed=k)
        else:
            source = next((r for r in refs[:distinct] if r.group == optimizer), refs[0])
            shutil.copytree(source.path, run_dir)
        refs.append(RunRef(run_dir, group=optimizer))
    page_path = render_comparison(refs, root / run_files.COMPARISON)
    page = page_path.read_text(encoding="utf-8")
    details = sum(map(len, re.findall(r'class="detail-figure">(.*?)</script>', page, flags=re.S)))
    curves = sum(map(len, re.findall(r'class="section-data">(.*?)</script>', page, flags=re.S)))
    library = len(get_plotlyjs())
    single = render_dashboard(refs[0].path).stat().st_size
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    size = page_path.stat().st_size
    lines = [f"{args.runs} runs of {args.steps} steps with {args.model}'s parameters, logged every step"
             + (f" ({distinct} logged, the others copies of them)" if distinct < args.runs else ""),
             f"comparison page:           {mb(size)}",
             f"  plotly.js (once):        {mb(library)}",
             f"  curves (JSON):           {mb(curves)} ({mb(curves / args.runs)} per run)",
             f"  per-run detail figures:  {mb(details)} ({mb(details / args.runs)} per run)",
             f"  table and the rest:      {mb(len(page.encode()) - library - details - curves)}",
             f"one run's own dashboard:   {mb(single)}"]
    times = open_times_s(page_path, args.open) if args.open else []
    if times:
        lines.append(f"open in headless Chromium until interactive: median {statistics.median(times):.2f} s, "
                     f"max {max(times):.2f} s over {len(times)} loads")
    print("\n".join(lines))
    if args.out is not None:
        given = argv if argv is not None else sys.argv[1:]
        command = f"python benchmarks/dashboard_size.py {shlex.join(given)}".strip()
        table = ["| runs | steps | page | plotly.js | curves | detail figures | one run's report |",
                 "|---:|---:|---:|---:|---:|---:|---:|",
                 f"| {args.runs} | {args.steps} | {mb(size)} | {mb(library)} | {mb(curves)} | "
                 f"{mb(details)} | {mb(single)} |"]
        if times:
            table += ["", f"Open in headless Chromium until interactive ({chromium_version()}): median "
                          f"**{statistics.median(times):.2f} s**, max {max(times):.2f} s over {len(times)} "
                          "loads."]
        text = [f"Command: `{command}`", "",
                f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}.", "",
                *table, ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(text), encoding="utf-8")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
