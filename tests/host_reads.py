"""Counting the host synchronisations a piece of code would make on a GPU, while it runs on CPU tensors.

On CPU a read of a tensor's value is free, so a sync hides; this counts the operations that, on a CUDA
tensor, make the host wait for the device:

* device-to-host reads: ``aten._local_scalar_dense`` (``.item()``, ``bool()``, ``int()``, ``float()``, a
  Python ``if`` on a tensor), the ops whose output size depends on values (``nonzero``, ``masked_select``,
  ``unique``, ``bincount``, ``repeat_interleave`` without ``output_size``, ...), and ``tolist``/``numpy``/
  ``cpu``, which do not pass the dispatcher and are counted by wrapping them;
* tensors made from host data (``aten.lift_fresh``, e.g. ``torch.tensor([...])``): on CUDA a blocking copy,
  which ``torch.cuda.set_sync_debug_mode("error")`` refuses as well.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Ops that read the device on the host whatever their arguments.
_READS = {
    _aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default,
    _aten.bincount.default, _aten._unique2.default, _aten.unique_dim.default,
    _aten.unique_consecutive.default, _aten.equal.default, _aten.is_nonzero.default, _aten.histc.default,
    _aten.allclose.default,
}
_REPEAT_INTERLEAVE = {_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor}
_HOST_DATA = {_aten.lift_fresh.default, _aten.lift_fresh_copy.default}
_UNDISPATCHED = ("tolist", "numpy", "cpu")


class HostSyncCounter(TorchDispatchMode):
    """Counts reads (device to host) and host-data tensors (host to device) by name, while active."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.host_data: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS or (func in _REPEAT_INTERLEAVE and kwargs.get("output_size") is None):
            self.reads[str(func)] += 1
        elif func in _HOST_DATA:
            self.host_data[str(func)] += 1
        return func(*args, **kwargs)

    def total(self) -> int:
        return sum(self.reads.values()) + sum(self.host_data.values())


@contextmanager
def counting_host_syncs():
    """``with counting_host_syncs() as counter: ...``; then ``counter.reads``, ``counter.host_data``."""
    counter = HostSyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in _UNDISPATCHED}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            counter.reads[f"Tensor.{name}"] += 1
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        with counter:
            yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
