"""The pretraining configuration: one dataclass, set from a YAML file and overridden by CLI flags.

Every field is a flag (``max_steps`` -> ``--max-steps``); the YAML file uses the field names. Unknown keys
and values of the wrong type are errors that name the key. The run directory gets the merged config back as
``config.yaml`` (plus a ``launch`` section recording how the run was launched), and that file is a valid
``--config`` again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spam_opt import run_files as rf
from spam_opt.monitor.gradient_monitor import MODES as MONITOR_MODES
from spam_opt.spike_guard import ACTIONS as GUARD_ACTIONS
from trainers.optimizers import OPTIMIZERS, SHARDABLE_OPTIMIZERS
from trainers.preemption import SIGNALS, parse_duration

if TYPE_CHECKING:
    from trainers.quant import QuantConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
# Written by the trainer into the saved config.yaml; ignored when that file is read back.
LAUNCH_KEY = "launch"
# Old key -> new key: still read (config files, flags), with a warning naming the new one.
RENAMED = {"warmup_steps": "lr_warmup_steps"}
# SPAM's options that the config types (None: the optimizer's default) -> the optimizer's keyword.
SPAM_OPTIONS = rf.SPAM_OPTION_KEYS


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. Defaults are the README's main job (a few minutes on CPU).

    Example::

        cfg = load_config(["--model", "llama-tiny", "--max-steps", "20"])
    """

    # model and data
    model: str = "llama-9m"  # a preset of trainers.models, or a directory/path with a config.json
    dataset: str = "builtin"  # "builtin", local .txt/.jsonl/.json/.parquet files or folder, or a hub name
    dataset_config: str | None = None  # hub dataset configuration name
    text_field: str = "text"
    streaming: bool = False  # read the dataset in one pass instead of downloading/caching it (hub datasets)
    stream_val_docs: int = 1000  # with streaming: the first documents, held out for evaluation
    corpus_max_mb: float = 2.0  # built-in corpus: deterministic subset of this many MB (0 = all ~30 MB)
    val_fraction: float = 0.05  # documents held out for evaluation
    tune_fraction: float = 0.0  # documents held out of training for tuning (logged as tune_loss); 0: none
    tokenizer: str = "byte"  # "byte", "bpe" (trained on the corpus), or a local tokenizer directory
    bpe_vocab_size: int = 4096
    seq_len: int = 128
    cache_dir: str | None = None  # datasets cache (default: the Hugging Face cache)
    # low-bit training: fake quantization of the block linears (trainers/quant, docs/training.md)
    quant: str = "none"  # none, int8, int4, fp4 (OCP MX E2M1) or fp4-e1m2 (the Stable-SPAM paper's FP4)
    quant_group_size: int = 256  # entries per group along a layer's input width; 32 for the small presets
    quant_activations: bool = True  # quantize the layers' inputs too, not only their weights
    # optimization
    optimizer: str = "spam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    density: float = 1.0  # sparse momentum (spam): block matrices keep this fraction of their moments
    state_bits: int = 32  # spam, stable-spam: 8 keeps 2-D+ parameters' moments in 8 bits (1/4 the memory)
    # SPAM (None: the optimizer's default, docs/spam.md); reset_interval is Stable-SPAM's too
    spike_threshold: float | None = None  # SPAM's spike threshold theta (default 5000)
    reset_interval: int | None = None  # steps between momentum resets (SPAM 500, Stable-SPAM 1000)
    reset_warmup_steps: int | None = None  # SPAM's step-size warmup after each reset (default 150)
    clip_delay: int | None = None  # SPAM: steps after a reset before spike clipping starts (default 20)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)  # any other option, passed as is
    lr_warmup_steps: int = 50  # learning-rate warmup of the cosine schedule (formerly warmup_steps)
    max_grad_norm: float = 0.0  # global-norm clipping; 0 disables
    zclip: bool = False  # ZClip's adaptive z-score clipping of the global norm (max_grad_norm > 0: its bound)
    spike_guard: bool = False
    guard_sigma: float = 6.0
    guard_window: int = 128
    guard_min_history: int = 20
    guard_action: str = "skip"
    # batch and loop
    batch_size: int = 16  # sequences per process per micro-batch
    global_batch_size: int | None = None  # sequences per micro-batch, all processes (overrides batch_size)
    grad_accum: int = 1
    max_steps: int = 600
    seed: int = 0
    mixed_precision: str = "no"
    fsdp: bool = False  # shard with torch's fully_shard (FSDP2), checkpoint with torch.distributed.checkpoint
    # evaluation, monitoring, checkpoints
    eval_every: int = 200  # 0: no evaluation
    eval_batches: int = 8
    log_every: int = 10
    monitor_mode: str = "tensor"
    gss_threshold: float = 50.0
    inject_spike_steps: list[int] = field(default_factory=list)  # SpikeInjector: steps to multiply grads at
    inject_factor: float = 1000.0
    inject_pattern: str | None = None
    inject_fraction: float = 1.0  # < 1: only this fraction of each matched gradient's entries is multiplied
    bad_batch_steps: list[int] = field(default_factory=list)  # steps whose batch is made degenerate
    bad_batch: str = "random"  # how: random tokens, one token repeated, or the batch's tokens shuffled
    output_dir: str = "runs"
    run_name: str | None = None  # default: "<model>-<optimizer>"
    save_every: int = 200  # 0: no checkpoints
    keep_checkpoints: int = 2  # 0 keeps all
    resume: str = "none"  # "none", "auto" (latest good checkpoint of the run), or a checkpoint directory
    overwrite: bool = False  # start afresh even if the run directory already holds checkpoints
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers; [] for none
    dashboard: bool = True
    progress_bar: bool = True
    # preemption and faults (docs/training.md, "Preemption and faults")
    save_on_signal: list[str] = field(default_factory=lambda: list(SIGNALS))  # save, exit on these; []: off
    requeue_exit_code: int = 0  # the exit code of a run stopped by a signal or the time limit
    time_limit: str | None = None  # e.g. "3h50m": save and exit before this much time has passed
    max_bad_steps: int = 20  # stop when the loss is not finite this many steps in a row; 0: never
    skip_bad_records: bool = False  # local data: skip (and count) malformed records instead of stopping

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run_name or f"{self.model}-{self.optimizer}".replace("/", "_"))

    def per_process_batch(self, num_processes: int) -> int:
        """Sequences per process per micro-batch: ``global_batch_size / num_processes`` when it is set."""
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % num_processes:
            raise ValueError(f"global_batch_size={self.global_batch_size} does not split evenly over "
                             f"{num_processes} processes: use a multiple of {num_processes} or another "
                             "number of processes")
        return self.global_batch_size // num_processes

    def quant_config(self) -> QuantConfig:
        """The run's ``trainers.quant.QuantConfig``."""
        from trainers.quant import QuantConfig

        return QuantConfig(format=self.quant, group_size=self.quant_group_size,
                           activations=self.quant_activations)

    def validate(self) -> None:
        """Raise ValueError naming the option when a value is outside what the trainer accepts."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("guard_action", self.guard_action, GUARD_ACTIONS)
        _choice("monitor_mode", self.monitor_mode, MONITOR_MODES)
        from trainers.injection import BAD_BATCH_KINDS  # here: injection imports this module

        _choice("bad_batch", self.bad_batch, BAD_BATCH_KINDS)
        for name in self.save_on_signal:
            _choice("save_on_signal", name, SIGNALS)
        if self.time_limit is not None:
            parse_duration(self.time_limit)  # raises ValueError naming the option
        self._validate_spam_options()
        if not 0.0 < self.inject_fraction <= 1.0:
            raise ValueError(f"invalid inject_fraction={self.inject_fraction}: must be in (0, 1]")
        if any(s < 1 for s in self.bad_batch_steps + self.inject_spike_steps):
            raise ValueError("inject_spike_steps and bad_batch_steps are optimizer steps, counted from 1")
        from trainers.quant.config import MIN_GROUP_SIZE, QUANT_FORMATS

        _choice("quant", self.quant, QUANT_FORMATS)
        if self.quant_group_size < MIN_GROUP_SIZE:
            raise ValueError(f"invalid quant_group_size={self.quant_group_size}: must be >= {MIN_GROUP_SIZE} "
                             "(the outlier rule keeps 2 entries of each group exact)")
        for name in ("seq_len", "batch_size", "grad_accum", "eval_batches", "log_every", "bpe_vocab_size",
                     "stream_val_docs"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name}={getattr(self, name)}: must be >= 1")
        for name in ("max_steps", "lr_warmup_steps", "eval_every", "save_every", "keep_checkpoints",
                     "max_bad_steps", "requeue_exit_code"):
            if getattr(self, name) < 0:
                raise ValueError(f"invalid {name}={getattr(self, name)}: must be >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"invalid val_fraction={self.val_fraction}: must be in (0, 1)")
        if not 0.0 <= self.tune_fraction < 1.0 - self.val_fraction:
            raise ValueError(f"invalid tune_fraction={self.tune_fraction}: must be >= 0 and leave training "
                             f"documents beside val_fraction={self.val_fraction} (their sum < 1)")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"invalid density={self.density}: must be in (0, 1]")
        if self.density < 1.0 and self.optimizer != "spam":
            raise ValueError(f"density={self.density} is a SPAM option; use --optimizer spam or --density 1")
        if self.state_bits not in (8, 32):
            raise ValueError(f"invalid state_bits={self.state_bits}: accepted values are 8, 32")
        if self.state_bits != 32 and self.optimizer not in ("spam", "stable-spam"):
            raise ValueError(f"state_bits={self.state_bits} is an option of spam and stable-spam; use one of "
                             "them, an 8-bit optimizer (adamw8bit, torchao-adamw8bit), or --state-bits 32")
        if self.spike_guard and self.mixed_precision == "fp16":
            raise ValueError("spike_guard does not work with mixed_precision='fp16' (its loss scaler skips "
                             "steps on its own); use bf16")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ValueError(f"invalid global_batch_size={self.global_batch_size}: must be >= 1")
        if self.fsdp and self.optimizer not in SHARDABLE_OPTIMIZERS:
            raise ValueError(f"fsdp supports the optimizers {', '.join(SHARDABLE_OPTIMIZERS)}, not "
                             f"{self.optimizer!r} (its state does not shard); use one of them or drop --fsdp")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ValueError("fsdp takes mixed_precision 'bf16' or 'no': its fp16 would need a sharded loss "
                             "scaler, which the trainer does not run; use bf16")
        if self.lr <= 0 or self.max_grad_norm < 0 or self.corpus_max_mb < 0:
            raise ValueError("lr must be > 0, max_grad_norm and corpus_max_mb must be >= 0")
        if self.requeue_exit_code > 255:
            raise ValueError(f"invalid requeue_exit_code={self.requeue_exit_code}: an exit code is 0..255")

    def spam_options(self) -> dict[str, Any]:
        """The typed SPAM options that are set, as the optimizer's keywords."""
        values = {kw: getattr(self, name) for name, kw in SPAM_OPTIONS.items()}
        return {kw: value for kw, value in values.items() if value is not None}

    def _validate_spam_options(self) -> None:
        typed = {name for name in SPAM_OPTIONS if getattr(self, name) is not None}
        takes = {"spam": set(SPAM_OPTIONS), "stable-spam": {"reset_interval"}}.get(self.optimizer, set())
        if typed - takes:
            raise ValueError(f"{', '.join(sorted(typed - takes))}: not an option of optimizer "
                             f"{self.optimizer!r}; drop it or use --optimizer spam")
        twice = {name for name in typed if SPAM_OPTIONS[name] in self.optimizer_kwargs}
        if twice:
            name = sorted(twice)[0]
            raise ValueError(f"{name} is set twice, as a key and as optimizer_kwargs "
                             f"{SPAM_OPTIONS[name]!r}; keep the key {name}")
        for name in typed:
            if getattr(self, name) < 0:
                raise ValueError(f"invalid {name}={getattr(self, name)}: must be >= 0")


def _choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"invalid {name}={value!r}: accepted values are {', '.join(accepted)}")


_HINTS = typing.get_type_hints(TrainConfig)
FIELDS = {f.name: _HINTS[f.name] for f in dataclasses.fields(TrainConfig)}


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of ``X`` or ``X | None``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def check_value(key: str, value: Any) -> Any:
    """``value`` converted to the field's type, or a ValueError naming the key and the expected type."""
    hint, optional = _base_type(FIELDS[key])
    if value is None and optional:
        return None
    origin = typing.get_origin(hint) or hint
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list),
        dict: isinstance(value, dict),
    }[origin]
    if ok and origin is list:
        (item,) = typing.get_args(hint)
        ok = all(_is_item(item, v) for v in value)
    if not ok:
        shown = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)
        raise ValueError(f"config key {key!r} expects {shown}{' or null' if optional else ''}, "
                         f"got {value!r} ({type(value).__name__})")
    return float(value) if origin is float else value


def _is_item(item: type, value: Any) -> bool:
    return isinstance(value, item) and not (item is int and isinstance(value, bool))


def from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """A validated TrainConfig from a mapping of field names (e.g. a parsed YAML file)."""
    values = _renamed({k: v for k, v in values.items() if k != LAUNCH_KEY}, where)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                         f"known keys are: {', '.join(FIELDS)}")
    cfg = TrainConfig(**{k: check_value(k, v) for k, v in values.items()})
    cfg.validate()
    return cfg


def _renamed(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with deprecated keys under their new names (a FutureWarning each)."""
    for old, new in RENAMED.items():
        if old not in values:
            continue
        if new in values:
            raise ValueError(f"{where} sets both {old!r} and {new!r}; {old!r} is the old name of {new!r}: "
                             f"keep {new!r} only")
        warnings.warn(f"{where}: {old!r} (--{old.replace('_', '-')}) is deprecated, use {new!r} "
                      f"(--{new.replace('_', '-')})", FutureWarning, stacklevel=3)
        values[new] = values.pop(old)
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, "
                         f"not {type(data).__name__}")
    return data


def _cli_type(key: str) -> Any:
    """An argparse ``type=`` that parses the flag's string into the field's type."""
    hint, optional = _base_type(FIELDS[key])
    origin = typing.get_origin(hint) or hint

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if origin is list:
                (item,) = typing.get_args(hint)
                return [item(v) for v in text.split(",") if v.strip()]
            if origin is dict:
                value = json.loads(text)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
                return value
            return origin(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--{key.replace('_', '-')}: {err}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.pretrain",
        description="Pretrain a causal LM with spam-opt's optimizers (Accelerate). Flags override --config.",
    )
    parser.add_argument("--config", help="YAML file of TrainConfig keys (e.g. configs/llama-60m.yaml)")
    for key, hint in FIELDS.items():
        flag = "--" + key.replace("_", "-")
        default = TrainConfig.__dataclass_fields__[key]
        shown = default.default if default.default is not dataclasses.MISSING else default.default_factory()
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {shown})")
        else:
            parser.add_argument(flag, type=_cli_type(key), default=None, metavar=key.upper(),
                                help=f"(default: {shown})")
    for old, new in RENAMED.items():  # still accepted; from_dict warns and renames
        parser.add_argument("--" + old.replace("_", "-"), dest=old, type=_cli_type(new), default=None,
                            help=argparse.SUPPRESS)
    return parser


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then the ``--config`` YAML file, then the flags given in ``argv``."""
    args = vars(build_parser().parse_args(argv))
    path = args.pop("config")
    values = _renamed(read_yaml(path), str(path)) if path else {}
    values.update(_renamed({k: v for k, v in args.items() if v is not None}, "command line"))
    return from_dict(values, where=str(path) if path else "command line")


def save_config(cfg: TrainConfig, path: Path, launch: dict[str, Any]) -> None:
    import yaml

    data = dataclasses.asdict(cfg)
    data[LAUNCH_KEY] = launch
    path.write_text(yaml.safe_dump(data, sort_keys=False))
