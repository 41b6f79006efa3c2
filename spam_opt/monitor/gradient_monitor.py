"""``GradientSpikeMonitor``: gradient and loss spikes in any training loop, with no host sync per step."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spam_opt import run_files
from spam_opt._distributed import ShardGroups, all_reduce_per_tensor, shard_groups
from spam_opt._validation import check_int, check_number
from spam_opt.monitor.events import SPIKE_KINDS, SpikeEvent
from spam_opt.monitor.jsonl import append_jsonl
from spam_opt.monitor.statistics import GradientReductions, RunningScores
from spam_opt.outliers import RollingOutliers, default_min_history

logger = logging.getLogger(__name__)

MODES = ("tensor", "element")


@dataclass
class _Step:
    step: int
    present: tuple[int, ...]  # indices of the parameters that had a gradient
    reductions: Tensor | None
    loss: Tensor | float | None
    loss_score: Tensor | None  # (z-score, is an outlier) of the loss under the rolling outlier rule


def _is_main_process(accelerator: Any) -> bool:
    if accelerator is not None:
        return bool(accelerator.is_main_process)
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _innermost_optimizer(optimizer: Any) -> Any:
    # Accelerate's AcceleratedOptimizer and the spike guard wrap the optimizer that counts the clips.
    while not hasattr(optimizer, "spike_stats") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _check_scalar(name: str, value: Any) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"scalar {name!r} is a tensor of shape {tuple(value.shape)}; "
                             "pass a 0-dim tensor or a float")
        return value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"scalar {name!r} is {type(value).__name__}; pass a float or a 0-dim tensor")
    return float(value)


class GradientSpikeMonitor:
    """Gradient Spike Score monitor: per-parameter gradient spikes, loss spikes and the optimizer's clips.

    Call ``observe(step, loss)`` once per optimizer step, after backward and before any gradient clipping
    and ``optimizer.step()``: behind a norm clip a spiked tensor is scaled down with the rest and no longer
    stands out. In ``tensor`` mode (default) each step computes ‖g‖ and max|g| of every parameter
    (two fused reductions); ``element`` mode adds the paper's element-wise GSS (one extra float32 tensor per
    parameter). Results stay on device until every ``log_every``-th step, when one transfer brings the whole
    interval to the host, where values are scored against their running means: a score above
    ``gss_threshold`` is a spike. Loss spikes are losses more than ``loss_threshold`` standard deviations
    above the mean of the previous ``loss_window`` losses, once ``loss_min_history`` losses were seen
    (default 20, or the window when shorter): the rule of ``spam_opt.outliers`` that ``SpikeGuard`` applies
    too, so the two agree step for step when given the same window. The monitor's default window is 20 losses,
    the guard's 128: the long window misses a bad batch early in a run, when it still holds the fast initial
    fall of the loss (docs/algorithm.md gives the measurement). With an optimizer that has ``spike_stats()``
    (SPAM, Stable-SPAM), its clip counts and the momentum resets it reports are recorded too.

    The main process writes ``run_dir/spikes.jsonl`` (one row per event, see ``spam_opt.monitor.events``) and
    ``run_dir/metrics.jsonl``: per logging step ``step``, ``loss``, ``grad_norm`` (of that step),
    ``grad_norm_max`` (largest of the interval), ``spikes`` and ``nonfinite`` (events in the interval),
    ``clipped`` (entries the optimizer clipped in the steps it took since the previous row: the optimizer
    steps after ``observe``), ``grad_score`` (per parameter, its largest score of the interval) and the
    ``scalars``. It logs the numeric part of each row to the ``accelerator``'s trackers and warns through
    ``logging``. Under FSDP2 every rank must call ``observe`` and step the optimizer (sharded norms and clip
    counts are all-reduced).

    Example::

        monitor = GradientSpikeMonitor(model, optimizer, run_dir="runs/exp1")
        for step, batch in enumerate(loader, start=1):
            loss = model(**batch).loss
            loss.backward()
            monitor.observe(step, loss=loss.detach(), scalars={"lr": scheduler.get_last_lr()[0]})
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        monitor.close()
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any = None,
        run_dir: str | Path | None = None,
        mode: str = "tensor",
        gss_threshold: float = 50.0,
        log_every: int = 10,
        accelerator: Any = None,
        *,
        loss_threshold: float = 6.0,
        loss_window: int = 20,
        loss_min_history: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"invalid mode={mode!r}: accepted values are {', '.join(map(repr, MODES))}")
        check_number("gss_threshold", gss_threshold, low=0.0, low_open=True)
        check_int("log_every", log_every, low=1)
        check_number("loss_threshold", loss_threshold, low=0.0, low_open=True)
        check_int("loss_window", loss_window, low=2)
        if loss_min_history is None:
            loss_min_history = default_min_history(loss_window)
        check_int("loss_min_history", loss_min_history, low=2)
        if loss_min_history > loss_window:
            raise ValueError(f"invalid loss_min_history={loss_min_history}: accepted range is "
                             f"[2, loss_window={loss_window}]")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters: there are no gradients to monitor")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.mode, self.gss_threshold, self.log_every = mode, float(gss_threshold), log_every
        self.loss_threshold, self.loss_window = float(loss_threshold), loss_window
        self.loss_min_history = loss_min_history
        self.accelerator = accelerator
        self.is_main = _is_main_process(accelerator)
        self.run_dir = Path(run_dir) if run_dir is not None and self.is_main else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in run_files.LOGS:  # an empty file says "nothing yet", not "no run"
                (self.run_dir / name).touch()
        self._index_of = {id(p): i for i, p in enumerate(self.params)}
        self._numel = [p.numel() for p in self.params]
        self._reductions = GradientReductions(self.params, mode, self.gss_threshold)
        self._scores = RunningScores(len(self.params), self.gss_threshold)
        self._loss_rule: RollingOutliers | None = None  # made on the first loss's device
        self._pending: list[_Step] = []
        self._clips: list[tuple[int, Tensor, list[int]]] = []
        self._events: list[SpikeEvent] = []
        self._scalars: dict[str, float | Tensor] = {}
        self._last_step: int | None = None
        self._optimizer_steps = 0
        self._optimizer_indices: dict[tuple[int, ...], tuple[list[int], list[ShardGroups]]] = {}
        self._hook = None
        self.optimizer = _innermost_optimizer(optimizer) if optimizer is not None else None
        if self.optimizer is not None and hasattr(self.optimizer, "spike_stats"):
            if hasattr(self.optimizer, "register_step_post_hook"):
                self._hook = self.optimizer.register_step_post_hook(self._after_optimizer_step)
            else:
                logger.warning("%s has spike_stats() but no step hooks: its clip counts will not be recorded",
                               type(self.optimizer).__name__)

    # -- per step -------------------------------------------------------------------------------------

    def observe(self, step: int, loss: Tensor | float | None = None,
                scalars: dict[str, float | Tensor] | None = None) -> None:
        """Record this step's gradients (and loss, and ``scalars`` for the metrics row); log every
        ``log_every`` steps. Call after backward, before ``optimizer.step()``."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an int, got {type(step).__name__}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step} is not after the previous step {self._last_step}: call observe() "
                             "once per optimizer step with an increasing step number")
        loss_score = None
        if loss is not None:
            loss = _check_scalar("loss", loss)
            loss_score = self._score_loss(loss)
        self._scalars = {k: _check_scalar(k, v) for k, v in (scalars or {}).items()}
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        reductions = self._reductions(present) if present else None
        self._pending.append(_Step(step, present, reductions, loss, loss_score))
        self._last_step = step
        if step % self.log_every == 0:
            self.flush()

    def _score_loss(self, loss: Tensor | float) -> Tensor:
        """(z-score, is an outlier) of ``loss``, on device; the host reads it at the next flush."""
        if self._loss_rule is None:
            device = loss.device if isinstance(loss, Tensor) else self.params[0].device
            self._loss_rule = RollingOutliers(self.loss_window, device)
        z, outlier = self._loss_rule.observe(torch.as_tensor(loss), self.loss_threshold,
                                             self.loss_min_history)
        return torch.stack([z, outlier.to(z.dtype)])

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._optimizer_steps += 1
        step = self._last_step if self._last_step is not None else self._optimizer_steps
        stats = optimizer.spike_stats()
        if stats is None:
            return
        if len(stats.params):
            key = tuple(id(p) for p in stats.params)
            if key not in self._optimizer_indices:
                self._optimizer_indices[key] = ([self._index_of.get(id(p), -1) for p in stats.params],
                                                [shard_groups(p) for p in stats.params])
            indices, groups = self._optimizer_indices[key]
            # An optimizer counts the clips of its own shards: the full tensor's count is their sum.
            clipped = all_reduce_per_tensor(stats.clipped, groups, "sum") if any(groups) else stats.clipped
            self._clips.append((step, clipped, indices))
        resets = getattr(stats, "resets", ())  # the groups whose momentum the optimizer reset at this step
        if resets:
            param_groups = optimizer.param_groups
            names = ",".join(param_groups[r.group].get("name", f"group{r.group}") for r in resets)
            where = "*" if len(resets) == len(param_groups) else names
            self._events.append(SpikeEvent(step, where, "momentum_reset", None, resets[0].number))

    # -- at logging steps -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Read what was recorded since the last flush (one host transfer), score it, write and log it."""
        pending, clips, events, scalars = self._pending, self._clips, self._events, self._scalars
        self._pending, self._clips, self._events, self._scalars = [], [], [], {}
        if not self.is_main or not (pending or clips or events):
            return
        values = iter(self._to_host(pending, clips, scalars))
        P = len(self.params)
        fields = self._reductions.fields
        heat: dict[int, float] = {}
        norms_seen: list[float] = []
        row: dict[str, Any] = {}
        for rec in pending:
            red = [next(values) for _ in range(fields * P)] if rec.reductions is not None else []
            loss = next(values) if isinstance(rec.loss, Tensor) else rec.loss
            loss_score = (next(values), next(values)) if rec.loss_score is not None else None
            events.extend(self._score_gradients(rec, red, heat))
            norm_sq = math.fsum(red[i] for i in rec.present) if red else math.nan
            grad_norm = math.sqrt(norm_sq) if norm_sq >= 0 else math.nan
            norms_seen.append(grad_norm)
            if loss is not None and not math.isfinite(loss):
                events.append(SpikeEvent(rec.step, "loss", "nonfinite", None, None))
            elif loss_score is not None and loss_score[1]:
                events.append(SpikeEvent(rec.step, "loss", "loss", loss_score[0], loss))
            row = {"step": rec.step, "loss": loss, "grad_norm": grad_norm}
        clipped = 0
        for step, _, indices in clips:
            counts = [next(values) for _ in indices]
            for i, count in zip(indices, counts):
                if i >= 0 and count > 0:
                    events.append(SpikeEvent(step, self.names[i], "clip", count / self._numel[i], int(count)))
                    clipped += int(count)
        floats = {k: next(values) if isinstance(v, Tensor) else v for k, v in scalars.items()}
        events.sort(key=lambda e: e.step)
        if pending:
            if row["loss"] is None:
                del row["loss"]
            row["grad_norm_max"] = max(norms_seen, key=lambda x: -math.inf if math.isnan(x) else x)
            if self._hook is not None:
                row["clipped"] = clipped
            row["nonfinite"] = sum(e.kind == "nonfinite" for e in events)
            row["spikes"] = sum(e.kind in SPIKE_KINDS for e in events)
            row |= floats
            row["grad_score"] = {self.names[i]: float(f"{s:.4g}") for i, s in sorted(heat.items())}
        self._write(row if pending else None, events)

    def _to_host(self, pending: list[_Step], clips: list[tuple[int, Tensor, list[int]]],
                 scalars: dict[str, float | Tensor]) -> list[float]:
        """Every device value of the interval, in recording order, through one transfer."""
        tensors: list[Tensor] = []
        for rec in pending:
            if rec.reductions is not None:
                tensors.append(rec.reductions)
            if isinstance(rec.loss, Tensor):
                tensors.append(rec.loss)
            if rec.loss_score is not None:
                tensors.append(rec.loss_score)
        tensors.extend(c for _, c, _ in clips)
        tensors.extend(v for v in scalars.values() if isinstance(v, Tensor))
        if not tensors:
            return []
        device = tensors[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in tensors]).tolist()

    def _score_gradients(self, rec: _Step, red: list[float], heat: dict[int, float]) -> list[SpikeEvent]:
        P, events = len(self.params), []
        for i in rec.present:
            norm, largest = math.sqrt(red[i]) if red[i] >= 0 else math.nan, red[P + i]
            if not (math.isfinite(norm) and math.isfinite(largest)):
                events.append(SpikeEvent(rec.step, self.names[i], "nonfinite", None, None))
                continue
            norm_score, max_score = self._scores.update(i, norm, largest)
            if self.mode == "element":
                kind, score, value = "element_gss", red[2 * P + i], int(red[3 * P + i])
            elif norm_score >= max_score:
                kind, score, value = "grad_norm", norm_score, norm
            else:
                kind, score, value = "grad_max", max_score, largest
            heat[i] = max(heat.get(i, 0.0), score)
            if score > self.gss_threshold:
                events.append(SpikeEvent(rec.step, self.names[i], kind, score, value))
        return events

    def _write(self, row: dict[str, Any] | None, events: list[SpikeEvent]) -> None:
        if self.run_dir is not None:
            if row is not None:
                append_jsonl(self.run_dir / run_files.METRICS, [row])
            append_jsonl(self.run_dir / run_files.SPIKES, [e.to_json() for e in events])
        if row is not None and self.accelerator is not None:
            numeric = {k: v for k, v in row.items()
                       if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
            self.accelerator.log(numeric, step=row["step"])
        _log_events(events, self.gss_threshold)

    # -- other rows and the end -----------------------------------------------------------------------

    def log_scalars(self, step: int, scalars: dict[str, float | Tensor]) -> None:
        """Write a row of ``scalars`` (e.g. ``eval_loss``) for ``step`` now, to the file and the trackers."""
        checked = {k: _check_scalar(k, v) for k, v in scalars.items()}
        if not self.is_main:
            return
        row = {"step": step} | {k: float(v) for k, v in checked.items()}
        if self.run_dir is not None:
            append_jsonl(self.run_dir / run_files.METRICS, [row])
        if self.accelerator is not None:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Flush what is left (the steps since the last logging step) and detach from the optimizer."""
        self.flush()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> GradientSpikeMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_events(events: list[SpikeEvent], gss_threshold: float) -> None:
    spikes = [e for e in events if e.kind in SPIKE_KINDS]
    if spikes:
        top = max(spikes, key=lambda e: e.score or 0.0)
        logger.warning("%d spike event(s) between steps %d and %d (threshold %g); largest: %s score %.4g "
                       "in %s at step %d", len(spikes), spikes[0].step, spikes[-1].step, gss_threshold,
                       top.kind, top.score, top.param, top.step)
    bad = [e for e in events if e.kind == "nonfinite"]
    if bad:
        logger.warning("non-finite values at step(s) %s in: %s", sorted({e.step for e in bad}),
                       ", ".join(sorted({e.param for e in bad})[:10]))
    for e in events:
        if e.kind == "momentum_reset":
            logger.info("momentum reset %s of %s at step %d", e.value, e.param, e.step)
