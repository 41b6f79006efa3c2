"""Optimizer-state bytes, measured from the tensors an optimizer holds: spam_opt's optimizers and peers alike.

``opt.state`` is walked as it is: tensors count their bytes; tensor subclasses that hold their data in inner
tensors (torchao's quantized states, and DTensors, whose local shard is what this process holds) count
those; other objects kept in the state (GaLore's projector) count the tensors among their attributes. A
tensor shared between parameters (bitsandbytes' quantization map) counts once. 0-dim tensors (step counters)
are left out, as a count per parameter is not state that grows with the model.
"""

from __future__ import annotations

from typing import Any

import torch


def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        flatten = getattr(value, "__tensor_flatten__", None)
        if flatten is not None and type(value) not in (torch.Tensor, torch.nn.Parameter):
            # a DTensor also names its device mesh among its inner attributes: only tensors hold state
            inner = (getattr(value, name) for name in flatten()[0])
            return [t for v in inner if torch.is_tensor(v) for t in _tensors(v, depth)]
        return [value]
    if depth >= 2:
        return []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v, depth + 1)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return [t for v in vars(value).values() for t in _tensors(v, depth + 1)]
    return []


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``opt.state`` (see the module docstring for what counts).

    Example::

        from spam_opt.state_bytes import params_of, state_bytes

        opt.step()
        per_param = state_bytes(opt) / params_of(opt)
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for state in opt.state.values():
        for t in _tensors(state):
            if t.dim() == 0:
                continue
            key = (t.data_ptr(), t.numel() * t.element_size())
            if key not in seen:
                seen.add(key)
                total += key[1]
    return total


def params_of(opt: torch.optim.Optimizer) -> int:
    """Entries of the parameters ``opt`` optimizes."""
    return sum(p.numel() for g in opt.param_groups for p in g["params"])
