"""What a comparison page weighs: RUNS runs of STEPS steps, logged by the real monitor and optimizers.

    python benchmarks/dashboard_size.py                          # 20 runs of 1000 steps (a few minutes, CPU)
    python benchmarks/dashboard_size.py --runs 2 --steps 30      # smoke test

Each run holds the parameters of ``--model`` (built by trainers.models) and takes random gradients, 1000x
on a few tensors every 97th step, through SPAM or AdamW (alternately; the seeds of one optimizer are a
group); ``GradientSpikeMonitor`` logs every step, as the stability grid does, with an eval row every 100
steps and a ``config.yaml``. No training happens: only the logs' shape matters for the page's weight.
Prints the page's size and what it is made of.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--model", default="llama-9m")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs and page here (kept)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 2:
        parser.error("--runs must be >= 1 and --steps >= 2")
    from plotly.offline import get_plotlyjs

    from spam_opt.dashboard import RunRef, render_comparison, render_dashboard

    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="dashboard-size-"))
    refs = []
    for k in range(args.runs):
        optimizer = ("spam", "adamw")[k % 2]
        run_dir = root / f"{optimizer}-seed{k // 2}"
        synthesize(run_dir, args.model, optimizer, args.steps, seed=k)
        refs.append(RunRef(run_dir, group=optimizer))
    page_path = render_comparison(refs, root / "comparison.html")
    page = page_path.read_text(encoding="utf-8")
    details = sum(map(len, re.findall(r'class="detail-figure">(.*?)</script>', page, flags=re.S)))
    library = len(get_plotlyjs())
    single = render_dashboard(refs[0].path).stat().st_size
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    print(f"{args.runs} runs of {args.steps} steps with {args.model}'s parameters, logged every step")
    print(f"comparison page:           {mb(page_path.stat().st_size)}")
    print(f"  plotly.js (once):        {mb(library)}")
    print(f"  per-run detail figures:  {mb(details)} ({mb(details / args.runs)} per run)")
    print(f"  table and overlaid plots: {mb(len(page.encode()) - library - details)}")
    print(f"one run's own dashboard:   {mb(single)}")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
