"""Adaptive clipping of the global gradient norm with ZClip (the ``zclip`` package), checkpointed for resume.

The fixed bound is ``max_grad_norm`` (Accelerate's ``clip_grad_norm_``). With ``zclip`` on, the official ZClip
scales the gradients down when their norm is a z-score outlier of its running mean and variance (EMA), with
the package's defaults (alpha 0.97, z threshold 2.5, adaptive scaling); ``max_grad_norm`` > 0 is then passed
to it as its upper bound, as ZClip's own option does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainers.config import TrainConfig

# ZClip's running statistics: what an exact resume needs back.
_STATE = ("buffer", "initialized", "mean", "var")


class CheckpointedZClip:
    """ZClip with the ``state_dict``/``load_state_dict`` that Accelerate's checkpointing needs.

    Example::

        clip = CheckpointedZClip(max_grad_norm=None)
        loss.backward()
        clip.step(model)  # before optimizer.step()
    """

    def __init__(self, **options: Any) -> None:
        try:
            from zclip import ZClip
        except ImportError as err:
            raise ImportError("--zclip needs the zclip package: pip install spam-opt[clip]") from err
        self.zclip = ZClip(**options)

    def step(self, model: nn.Module) -> float:
        """Clip the gradients of ``model`` in place; returns the norm before clipping."""
        return self.zclip.step(model)

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self.zclip, key) for key in _STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in _STATE:
            setattr(self.zclip, key, state[key])


def build_zclip(cfg: TrainConfig) -> CheckpointedZClip | None:
    """The run's ZClip when ``zclip`` is on, else None."""
    if not cfg.zclip:
        return None
    return CheckpointedZClip(max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else None)
