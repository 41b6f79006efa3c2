"""What a run directory holds: the names of its files, of the metrics in ``metrics.jsonl`` and of the event
kinds in ``spikes.jsonl``, defined once for the monitor that writes them, the trainer, the dashboard and the
benchmark grids that read them.

A run directory (the trainer's ``--output-dir/--run-name``, or any ``run_dir`` given to the monitor)::

    metrics.jsonl     one JSON object per logged step: "step" and the metrics below
    spikes.jsonl      one JSON object per event (spam_opt.monitor.events)
    config.yaml       the trainer's settings, with a "launch" section
    tokenizer/        the tokenizer the run trained with
    checkpoints/      checkpoints/step_N, the trainer's resumable states
    final/            the trained model, save_pretrained
    dashboard.html    spam-dashboard's report of the run

Example::

    from spam_opt import run_files as rf
    rows, warnings = read_jsonl(path / rf.METRICS)
    losses = [r[rf.LOSS] for r in rows if rf.LOSS in r]
"""

from __future__ import annotations

from pathlib import Path

# -- files ------------------------------------------------------------------------------------------------
METRICS = "metrics.jsonl"
SPIKES = "spikes.jsonl"
LOGS = (METRICS, SPIKES)  # what the monitor writes (both created, empty, when a run starts)
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
FINAL = "final"
DASHBOARD = "dashboard.html"
COMPARISON = "comparison.html"  # spam-dashboard's page for a folder of runs

# -- metrics.jsonl: every row has STEP; the rest are there when logged --------------------------------------
STEP = "step"
LOSS = "loss"  # training loss of the step
GRAD_NORM = "grad_norm"  # global gradient norm of the step (before clipping)
GRAD_NORM_MAX = "grad_norm_max"  # largest GRAD_NORM of the logging interval
GRAD_SCORE = "grad_score"  # {parameter: its largest spike score of the interval}
SPIKE_COUNT = "spikes"  # spike events in the interval
NONFINITE_COUNT = "nonfinite"  # non-finite events in the interval
CLIPPED = "clipped"  # entries the optimizer clipped since the previous row
LR = "lr"
TOKENS_PER_S = "tokens_per_s"  # throughput over the steps since the previous row
TIME = "time"  # wall-clock time the row was logged at, seconds since the epoch (time.time())
TOKENS = "tokens"  # tokens trained on up to and including the step, all processes together
GUARD_SKIPPED = "guard_skipped"  # steps the spike guard skipped so far
OPTIMIZER_STATE_BYTES = "optimizer_state_bytes"
EVAL_LOSS = "eval_loss"
EVAL_PPL = "eval_ppl"
TUNE_LOSS = "tune_loss"  # loss on the tuning split (--tune-fraction), for choosing hyperparameters
FIRING_RATE = "firing_rate/"  # prefix: firing_rate/<layer> of spiking models

# -- config.yaml: what sets the tokens of one optimizer step ----------------------------------------------
BATCH_SIZE, GLOBAL_BATCH_SIZE = "batch_size", "global_batch_size"
SEQ_LEN, GRAD_ACCUM = "seq_len", "grad_accum"
LAUNCH = "launch"  # how the run was launched: config[LAUNCH][NUM_PROCESSES], ...
NUM_PROCESSES, BATCH_SIZE_PER_PROCESS = "num_processes", "batch_size_per_process"
# config.yaml's typed SPAM options, by the optimizer keyword each sets (the rest sit in "optimizer_kwargs")
SPAM_OPTION_KEYS = {"spike_threshold": "threshold", "reset_interval": "reset_interval",
                    "reset_warmup_steps": "warmup_steps", "clip_delay": "clip_delay"}

# -- spikes.jsonl: the "kind" of an event ------------------------------------------------------------------
GRAD_NORM_EVENT, GRAD_MAX_EVENT, ELEMENT_GSS_EVENT = "grad_norm", "grad_max", "element_gss"
LOSS_EVENT = "loss"
NONFINITE_EVENT = "nonfinite"
CLIP_EVENT = "clip"
MOMENTUM_RESET_EVENT = "momentum_reset"
GRADIENT_KINDS = (GRAD_NORM_EVENT, GRAD_MAX_EVENT, ELEMENT_GSS_EVENT)
SPIKE_KINDS = (*GRADIENT_KINDS, LOSS_EVENT)  # what the metrics' "spikes" count and the dashboard marks


def is_run_dir(path: Path) -> bool:
    """A run directory is one holding ``metrics.jsonl`` (the monitor creates it when the run starts)."""
    return (path / METRICS).is_file()
