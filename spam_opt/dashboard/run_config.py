"""A run's settings as the trainer writes them (``config.yaml``): read without failing, and told in a few
words for the run's page and the comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.run_files import CONFIG


def read_config(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The run's ``config.yaml`` as a mapping, and warnings when it is missing or unreadable."""
    path = run_dir / CONFIG
    if not run_dir.is_dir():  # the run's own warning says so
        return {}, []
    if not path.is_file():
        return {}, [f"{CONFIG} is missing: model and optimizer unknown"]
    try:
        import yaml
    except ImportError:
        return {}, [f"pyyaml is missing, so {CONFIG} is not read: pip install spam-opt[dashboard]"]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, yaml.YAMLError) as exc:
        return {}, [f"{CONFIG} cannot be read ({type(exc).__name__}): model and optimizer unknown"]
    if not isinstance(data, dict):
        return {}, [f"{CONFIG} holds no mapping of settings: model and optimizer unknown"]
    return data, []


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def describe_optimizer(config: dict[str, Any]) -> str | None:
    """The optimizer and the options that tell runs apart: lr, sparsity, clipping, guard, extra kwargs."""
    name = config.get("optimizer")
    if name is None:
        return None
    options = [f"lr {_g(config['lr'])}"] if "lr" in config else []
    if isinstance(config.get("density"), (int, float)) and config["density"] < 1:
        options.append(f"density {_g(config['density'])}")
    if config.get("weight_decay"):
        options.append(f"wd {_g(config['weight_decay'])}")
    norm = config.get("max_grad_norm")
    if config.get("zclip"):  # adaptive clipping of the global norm, bounded by max_grad_norm when set
        options.append(f"zclip max {_g(norm)}" if norm else "zclip")
    elif norm:
        options.append(f"clip-norm {_g(norm)}")
    if config.get("spike_guard"):
        options.append(f"guard {config.get('guard_action', 'skip')}")
    options += [f"{keyword}={_g(config[key])}" for key, keyword in rf.SPAM_OPTION_KEYS.items()
                if config.get(key) is not None]
    kwargs = config.get("optimizer_kwargs")
    if isinstance(kwargs, dict):
        options += [f"{k}={_g(v)}" for k, v in kwargs.items()]
    return f"{name} {', '.join(options)}" if options else str(name)


def describe_quant(config: dict[str, Any]) -> str | None:
    """``int4 g256, activations`` for a low-bit run; None when the run has no ``quant`` key or ``none``."""
    quant = config.get("quant")
    if quant in (None, "none"):
        return None
    text = str(quant)
    if config.get("quant_group_size") is not None:
        text += f" g{_g(config['quant_group_size'])}"
    if "quant_activations" in config:
        text += ", activations" if config["quant_activations"] else ", weights only"
    return text
