"""``SpikeMonitorCallback``: the gradient-spike monitor in ``transformers.Trainer`` (needs transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError("SpikeMonitorCallback needs transformers: pip install spam-opt[train]") from exc

from spam_opt import run_files as rf
from spam_opt.monitor.gradient_monitor import GradientSpikeMonitor

_TRAINER_KEYS = {"learning_rate": rf.LR}  # the Trainer's log names -> the monitor's
_OPTIONS = {"mode", "gss_threshold", "log_every", "loss_threshold", "loss_window", "loss_min_history"}
_DROPPED = {"grad_norm"}  # the monitor logs its own, measured after clipping, at the step it belongs to


class SpikeMonitorCallback(TrainerCallback):
    """Runs a ``GradientSpikeMonitor`` in ``transformers.Trainer``.

    The monitor observes every optimizer step at ``on_pre_optimizer_step``, the Trainer's one hook between
    backward and the step, which comes after its gradient clipping: with ``max_grad_norm`` > 0 it therefore
    reads clipped gradients, where a spiked tensor is scaled down with the rest (spam-opt's own trainer
    observes before its clip). It reads the
    optimizer's clip counts and momentum resets (SPAM, Stable-SPAM), and writes ``metrics.jsonl`` and
    ``spikes.jsonl`` to ``run_dir`` (default: the Trainer's ``output_dir``), logging every
    ``args.logging_steps`` steps unless ``log_every`` is given. The Trainer's own logs (loss, learning rate,
    eval metrics) are added to ``metrics.jsonl`` so that ``spam-dashboard`` shows them. Options are those of
    ``GradientSpikeMonitor``.

    Example::

        from spam_opt.monitor.hf_callback import SpikeMonitorCallback
        trainer = Trainer(model, args, train_dataset=data, optimizers=(SPAM(model.parameters()), None),
                          callbacks=[SpikeMonitorCallback(mode="tensor")])
        trainer.train()  # then: spam-dashboard <output_dir>
    """

    def __init__(self, run_dir: str | Path | None = None, **monitor_options: Any) -> None:
        unknown = set(monitor_options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for SpikeMonitorCallback; accepted: "
                             f"{', '.join(sorted(_OPTIONS))}")
        self.run_dir, self.options = run_dir, monitor_options
        self.monitor: GradientSpikeMonitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        steps = args.logging_steps  # below 1 it is a fraction of the run, not a step count
        options = {"log_every": int(steps) if steps >= 1 else 10} | self.options
        run_dir = self.run_dir or args.output_dir
        self.monitor = GradientSpikeMonitor(model, optimizer, run_dir=run_dir, **options)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.observe(state.global_step + 1)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.monitor is None or not logs:
            return
        scalars = {_TRAINER_KEYS.get(k, k): v for k, v in logs.items()
                   if k not in _DROPPED and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            self.monitor.log_scalars(state.global_step, scalars)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
