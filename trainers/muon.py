"""Muon on the block matrices and AdamW on the rest, as one optimizer: the trainer's ``--optimizer muon``.

``torch.optim.Muon`` orthogonalizes the momentum of 2-D hidden weights; its documentation advises AdamW for
the parameters that are not hidden matrices (embeddings, the output head, norms, biases). The split is
``spam_opt.param_groups``' "blocks" against the rest, the same split SPAM's sparse momentum uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


class MuonWithAdamW(Optimizer):
    """``torch.optim.Muon`` for the block matrices, ``torch.optim.AdamW`` for the rest, one lr for both.

    Muon's lr is scaled to match AdamW's update size (``adjust_lr_fn="match_rms_adamw"``), so one lr (and one
    schedule) drives both. The scheduler, Accelerate and checkpoints see one optimizer: its param groups are
    the two optimizers' groups (the same dicts) and both keep their state in its ``state``.

    Example::

        opt = MuonWithAdamW(model, lr=1e-3)
        loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", fused: bool | None = None) -> None:
        from spam_opt.param_groups import param_groups

        groups = param_groups(model)
        matrices = [p for g in groups if g["name"] == "blocks" for p in g["params"]]
        rest = [p for g in groups if g["name"] != "blocks" for p in g["params"]]
        if not matrices:
            raise ValueError("optimizer 'muon' found no block matrices (2-D weights besides the embeddings "
                             "and the head) in the model; use adamw for it")
        self._muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self._adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused) \
            if rest else None
        super().__init__(matrices + rest, {"lr": lr})
        self._link(self._muon.param_groups + (self._adamw.param_groups if self._adamw else []))

    def _link(self, groups: list[dict[str, Any]]) -> None:
        self.param_groups = groups
        self._muon.param_groups = groups[:1]
        self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = groups[1:]
            self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The base class replaces the groups and the state with new objects: the two optimizers follow them.
        super().load_state_dict(state_dict)
        self._link(self.param_groups)
