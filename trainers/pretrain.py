"""Pretrain a causal LM with spam-opt's optimizers, with Accelerate.

    python -m trainers.pretrain                                   # the README's main job, CPU, a few minutes
    python -m trainers.pretrain --model llama-tiny --max-steps 50 --optimizer adamw
    accelerate launch -m trainers.pretrain --config configs/llama-60m.yaml --resume auto
    torchrun --nproc-per-node 8 -m trainers.pretrain --config configs/llama-1b.yaml --fsdp   # FSDP2

Per optimizer step: ``grad_accum`` micro-batches forward/backward (a degenerate batch at the steps of
``bad_batch_steps``), optional spike injection, optional global-norm clipping (fixed, or ZClip's), the
spike monitor reads the gradients, then the optimizer steps (through the spike guard when enabled) and the
LR schedule advances (``train_step``). Evaluation, checkpoints and logging happen at their intervals. The
engine (``trainers.engine``: Accelerate, or FSDP2 under ``--fsdp``) does what differs between the two. A
signal or ``--time-limit`` stops the run after a step with a checkpoint (``trainers.preemption``); a loss
that stays non-finite stops it with an error (``trainers.divergence``). See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from spam_opt import run_files as rf
from spam_opt.state_bytes import state_bytes
from trainers.checkpointing import DiskFullError, TrainState, resume_from, save_checkpoint
from trainers.clipping import build_zclip
from trainers.config import TrainConfig, load_config, save_config
from trainers.data import (
    BadRecordError,
    BlockBatches,
    StreamBatches,
    build_splits,
    load_documents,
    make_batches,
    make_tokenizer,
    screen_records,
)
from trainers.divergence import Diverged, LossWatch
from trainers.engine import Engine, build_engine
from trainers.export import save_plain
from trainers.injection import build_injector, degenerate_batch
from trainers.models import build_model
from trainers.monitoring import build_monitor, trim_jsonl
from trainers.optimizers import build_optimizer, build_spike_guard
from trainers.preemption import EXIT_DIVERGED, RunStopped, StopRequest, parse_duration
from trainers.quant import quantize_model

logger = logging.getLogger("trainers.pretrain")


def _prepare_run_dir(cfg: TrainConfig, accelerator: Any) -> Path:
    """The run directory, refusing to mix a new run into an old one's logs and checkpoints."""
    run_dir = cfg.run_dir
    if accelerator.is_main_process and run_dir.is_dir() and any(run_dir.iterdir()) and cfg.resume == "none":
        if not cfg.overwrite:
            raise FileExistsError(f"run directory {run_dir} is not empty: pass --resume auto to continue it, "
                                  "--overwrite to start it afresh, or another --run-name")
        shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: BlockBatches | StreamBatches, num_batches: int,
             accelerator: Any) -> dict[str, float]:
    """Mean validation loss over the first ``num_batches`` global batches, and its perplexity."""
    model.eval()
    total = torch.zeros((), device=accelerator.device)
    for i in range(num_batches):
        batch = batches[i].to(accelerator.device)
        total += model(input_ids=batch, labels=batch).loss.float()
    model.train()
    loss = accelerator.reduce(total / num_batches, "mean").item()
    return {rf.EVAL_LOSS: loss, rf.EVAL_PPL: math.exp(min(loss, 50.0))}


def train(cfg: TrainConfig) -> Path:
    """Run the training ``cfg`` describes; returns the run directory.

    A run stopped by a signal or its time limit raises ``RunStopped`` (a SystemExit with the run's exit code)
    after its checkpoint; a diverged one raises ``Diverged`` after its dashboard.
    """
    from accelerate.utils import ProjectConfiguration

    started = time.monotonic()  # the time limit counts from here
    project = ProjectConfiguration(project_dir=str(cfg.run_dir), logging_dir=str(cfg.run_dir / "tensorboard"))
    engine = build_engine(cfg, project)
    with engine.session():
        return _train(cfg, engine, started)


class Throughput:
    """Tokens per second averaged over the steps since the last restart (a log, an evaluation, a save).

    On a GPU a single step's wall time only measures the launch of its kernels, while the host syncs at
    logging steps keep the window honest.

    Example::

        throughput = Throughput(tokens_per_step=8 * 128)
        tokens_per_s = throughput.tick()  # after each step
        throughput.restart()  # after a log, an evaluation or a save
    """

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def tick(self) -> float:
        self.steps += 1
        return self.tokens_per_step * self.steps / (time.perf_counter() - self.start)


@dataclasses.dataclass
class StepParts:
    """Everything one optimizer step reads or updates; ``_train`` builds it once, ``train_step`` uses it.

    Example::

        loss, scalars = train_step(parts, step=1)
    """

    cfg: TrainConfig
    engine: Engine
    model: torch.nn.Module
    optimizer: Any  # Accelerate's wrapper
    scheduler: Any
    guard: Any  # SpikeGuard or None
    zclip: Any  # CheckpointedZClip or None
    monitor: Any
    injector: Any
    batches: BlockBatches | StreamBatches
    vocab_size: int
    throughput: Throughput
    watch: LossWatch
    spike_metrics: Any = None  # SpikeGPT's firing rates and synops

    @property
    def raw_optimizer(self) -> Any:
        return self.optimizer.optimizer


def train_step(p: StepParts, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Optimizer step ``step`` (1-based): forward/backward of its micro-batches, the monitor, the clip, the
    update and the LR schedule. Returns the loss (averaged over micro-batches and processes, on the device)
    and the scalars logged with it."""
    cfg, accelerator = p.cfg, p.engine.accelerator
    loss = torch.zeros((), device=accelerator.device)
    for micro in range(cfg.grad_accum):
        batch = p.batches[(step - 1) * cfg.grad_accum + micro].to(accelerator.device)
        if step in cfg.bad_batch_steps:
            batch = degenerate_batch(batch, cfg.bad_batch, p.vocab_size, cfg.seed, step)
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        with nullcontext() if micro == cfg.grad_accum - 1 else p.engine.no_sync(p.model):
            micro_loss = p.model(input_ids=batch, labels=batch).loss / cfg.grad_accum
            accelerator.backward(micro_loss)
        loss += micro_loss.detach().float()
    if p.injector is not None:
        p.injector.apply(step)
    loss = accelerator.reduce(loss, "mean")
    p.watch.observe(loss)
    tokens_per_s = p.throughput.tick()
    # Wall-clock time and tokens seen: the comparison page's other x axes (host values, no device read).
    scalars: dict[str, Any] = {rf.LR: p.scheduler.get_last_lr()[0], rf.TOKENS_PER_S: tokens_per_s,
                               rf.TIME: time.time(), rf.TOKENS: p.throughput.tokens_per_step * step}
    if callable(p.spike_metrics):
        scalars.update(p.spike_metrics())
    if p.guard is not None and step % cfg.log_every == 0:
        scalars[rf.GUARD_SKIPPED] = p.guard.num_skipped  # skipped so far; it syncs, so only when logging
    # Before the clip: a spike the clip scales away is still the anomaly the monitor is there to find.
    p.monitor.observe(step, loss=loss, scalars=scalars)
    if p.zclip is not None:
        p.zclip.step(p.model)
    elif cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(p.model.parameters(), cfg.max_grad_norm)
    if p.guard is not None:
        p.guard.step(loss=loss)
    else:
        p.optimizer.step()
    p.scheduler.step()
    p.optimizer.zero_grad(set_to_none=True)
    if step == 1:  # the optimizer's state exists from its first step on, at its final size
        p.monitor.log_scalars(step, {rf.OPTIMIZER_STATE_BYTES: state_bytes(p.raw_optimizer)})
    return loss, scalars


def _train(cfg: TrainConfig, engine: Engine, started: float) -> Path:
    """The run, once the engine (and under --fsdp the process group) exists."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    accelerator = engine.accelerator
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("trainers").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(cfg.seed)
    run_dir = _prepare_run_dir(cfg, accelerator)

    # Data: the main process fills the datasets cache first, the others then read it.
    with accelerator.main_process_first():
        source, skipped = screen_records(cfg.dataset, cfg.text_field, skip=cfg.skip_bad_records,
                                         cache_dir=cfg.cache_dir)
        docs = load_documents(source, cfg.text_field, max_mb=cfg.corpus_max_mb,
                              dataset_config=cfg.dataset_config, cache_dir=cfg.cache_dir,
                              streaming=cfg.streaming)
        tokenizer = make_tokenizer(cfg.tokenizer, docs, cfg.bpe_vocab_size, cfg.text_field,
                                   saved=run_dir / rf.TOKENIZER)
        if accelerator.is_main_process:  # a trained BPE is then loaded, not retrained, by the others
            tokenizer.save_pretrained(str(run_dir / rf.TOKENIZER))
        splits = build_splits(docs, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.text_field,
                              cfg.stream_val_docs, cfg.tune_fraction)
    rank, world = accelerator.process_index, accelerator.num_processes
    batch_size = cfg.per_process_batch(world)
    train_batches = make_batches(splits.train, batch_size, cfg.seed, rank, world)
    val_batches = make_batches(splits.val, batch_size, cfg.seed, rank, world, shuffle=False,
                               name="validation")
    tune_batches = None if splits.tune is None else make_batches(
        splits.tune, batch_size, cfg.seed, rank, world, shuffle=False, name="tuning")
    eval_batches = min(cfg.eval_batches, len(val_batches)) if cfg.eval_every else 0
    if cfg.eval_every and eval_batches == 0:
        raise ValueError("the validation split is smaller than one global batch; raise --stream-val-docs "
                         "or --val-fraction, or lower --batch-size")

    model = build_model(cfg.model, len(tokenizer), cfg.seq_len, tokenizer.eos_token_id)
    quantized = quantize_model(model, cfg.quant_config())  # before the optimizer and the wrappers see it
    if quantized:
        logger.info("fake quantization %s: %d linear layers", cfg.quant_config(), len(quantized))
    model, optimizer = engine.prepare(model, lambda m: build_optimizer(cfg, m))
    raw_optimizer = optimizer.optimizer  # what the monitor reads and the spike guard wraps
    scheduler = get_cosine_schedule_with_warmup(raw_optimizer, cfg.lr_warmup_steps, max(cfg.max_steps, 1))
    guard = build_spike_guard(cfg, raw_optimizer) if cfg.spike_guard else None
    zclip = build_zclip(cfg)
    state = TrainState()
    # The scheduler is ours, not Accelerate's (which would step it once per process), so it is saved here.
    stateful = {"scheduler": scheduler, "train_state": state, "guard": guard, "zclip": zclip}
    store = engine.store(model, raw_optimizer, {k: v for k, v in stateful.items() if v is not None})

    resumed = resume_from(store, run_dir, cfg.resume)
    if resumed is not None:
        logger.info("resumed from %s at step %d", resumed, state.step)
    if accelerator.is_main_process and cfg.resume != "none":  # logged steps after it will be logged again
        for log in rf.LOGS:
            trim_jsonl(run_dir / log, state.step)
    if accelerator.is_main_process:
        launch = {rf.NUM_PROCESSES: world, rf.BATCH_SIZE_PER_PROCESS: batch_size,
                  "distributed_type": accelerator.distributed_type.value, "device": str(accelerator.device),
                  "resumed_from": str(resumed) if resumed else None, "skipped_records": skipped}
        save_config(cfg, run_dir / rf.CONFIG, launch)
    accelerator.init_trackers(run_dir.name, config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})
    unwrapped = accelerator.unwrap_model(model)
    monitor = build_monitor(cfg, unwrapped, raw_optimizer, run_dir, accelerator)
    if skipped:  # logged with the first step this process trains
        monitor.log_scalars(state.step + 1, {"skipped_records": skipped})
    parts = StepParts(cfg=cfg, engine=engine, model=model, optimizer=optimizer, scheduler=scheduler,
                      guard=guard, zclip=zclip, monitor=monitor, injector=build_injector(cfg, unwrapped),
                      batches=train_batches, vocab_size=len(tokenizer),
                      throughput=Throughput(batch_size * cfg.seq_len * cfg.grad_accum * world),
                      watch=LossWatch(cfg.max_bad_steps, accelerator.device),
                      spike_metrics=getattr(unwrapped, "spike_metrics", None))
    stop = StopRequest(cfg.save_on_signal, parse_duration(cfg.time_limit) if cfg.time_limit else None,
                       check_every=cfg.log_every, start=started)
    saved = str(resumed) if resumed else None

    from tqdm.auto import tqdm

    progress = tqdm(total=cfg.max_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not (accelerator.is_main_process and cfg.progress_bar))
    model.train()
    stopped = None
    with stop.installed():
        while state.step < cfg.max_steps:
            step = state.step + 1  # 1-based, like the optimizer's own step count
            loss, scalars = train_step(parts, step)
            state.step = step
            progress.update(1)
            restart_window = step % cfg.log_every == 0
            if restart_window:
                try:
                    parts.watch.check(step, saved)
                except Diverged:
                    progress.close()
                    _close(cfg, accelerator, monitor, run_dir)
                    raise
                if not progress.disable:
                    progress.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{scalars['tokens_per_s']:.0f}",
                                         lr=f"{scalars['lr']:.2e}")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metrics = evaluate(model, val_batches, eval_batches, accelerator)
                if tune_batches is not None:
                    tuned = evaluate(model, tune_batches, min(cfg.eval_batches, len(tune_batches)),
                                     accelerator)
                    metrics[rf.TUNE_LOSS] = tuned[rf.EVAL_LOSS]
                monitor.log_scalars(step, metrics)
                logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                restart_window = True
            stopped = stop.should_stop(step, accelerator.device) if step < cfg.max_steps else None
            if stopped or (cfg.save_every and (step % cfg.save_every == 0 or step == cfg.max_steps)):
                if parts.watch.latest_is_finite():
                    save_start = time.monotonic()
                    saved = str(save_checkpoint(accelerator, store, run_dir, step, cfg.keep_checkpoints))
                    stop.record_save(time.monotonic() - save_start)
                else:
                    logger.warning("step %d: not saved, its loss is not finite; %s stays the last checkpoint",
                                   step, saved)
                restart_window = True
            if stopped:
                break
            if restart_window:
                parts.throughput.restart()
        progress.close()
        if stopped:
            logger.warning("stopped at step %d of %d (%s): checkpoint %s; continue with --resume auto, "
                           "exit code %d", state.step, cfg.max_steps, stopped, saved, cfg.requeue_exit_code)
            _close(cfg, accelerator, monitor, run_dir, dashboard=False)
            raise RunStopped(cfg.requeue_exit_code, state.step, stopped)

        accelerator.wait_for_everyone()
        state_dict = engine.full_state_dict(model)
        if accelerator.is_main_process:
            save_plain(unwrapped, state_dict, tokenizer, run_dir / rf.FINAL)
        _close(cfg, accelerator, monitor, run_dir)
    return run_dir


def _close(cfg: TrainConfig, accelerator: Any, monitor: Any, run_dir: Path, dashboard: bool = True) -> None:
    """Flush the logs, close the trackers, and render the dashboard (``dashboard`` and ``cfg.dashboard``)."""
    monitor.close()
    accelerator.end_training()
    if accelerator.is_main_process and cfg.dashboard and dashboard:
        _render_dashboard(run_dir)


def _render_dashboard(run_dir: Path) -> None:
    from spam_opt.dashboard import render_dashboard

    try:
        print(f"dashboard: {render_dashboard(run_dir)}")
    except ImportError as err:  # plotly is an extra; the run itself is complete
        print(f"run finished in {run_dir}; no dashboard: {err}")


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: ``argv`` as for ``python -m trainers.pretrain`` (None: ``sys.argv``)."""
    return train(load_config(argv))


# What bad input raises here (a config, a data file, a run directory, a missing extra): each message names
# the problem and the fix, so the command line shows it alone. Anything else keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, DiskFullError, BadRecordError)

if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
