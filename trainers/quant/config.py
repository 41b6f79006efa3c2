"""What a quantized model quantizes, and how: the formats and their per-layer quantizers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from torch import Tensor

from trainers.quant.fake_quant import absmax_int, minmax_int, mx_fp4

Quantizer = Callable[[Tensor], Tensor]


class Format(NamedTuple):
    """A format's quantizers, each called as ``quantizer(x, group_size=...)``."""

    weight: Callable[..., Tensor]
    activation: Callable[..., Tensor]
    grouped: bool  # False: per output channel and per token, whatever group_size says


FORMATS: dict[str, Format] = {
    # The cheap baseline: symmetric, 255 levels, per output channel (weights) and per token (activations).
    "int8": Format(partial(absmax_int, bits=8), partial(absmax_int, bits=8), grouped=False),
    # The Stable-SPAM paper's INT4: asymmetric min-max weights; absmax activations, 2 per group kept exact.
    "int4": Format(partial(minmax_int, bits=4), partial(absmax_int, bits=4, keep=2), grouped=True),
    # OCP MX FP4 (E2M1 elements, a power-of-two scale per group; the MX spec's block is 32), both operands.
    "fp4": Format(mx_fp4, mx_fp4, grouped=True),
    # The paper's FP4, E1M2 with its outlier rule on both operands. E1M2's one exponent bit gives a uniform
    # grid: the symmetric 15-level INT4 grid, scaled so that the largest magnitude left after the 2 kept
    # ones is E1M2's largest value.
    "fp4-e1m2": Format(partial(absmax_int, bits=4, keep=2), partial(absmax_int, bits=4, keep=2),
                       grouped=True),
}
QUANT_FORMATS = ("none", *FORMATS)
MIN_GROUP_SIZE = 3  # the outlier rule keeps 2 entries of a group exact; at least one must be quantized
CONFIG_KEY = "fake_quantization"  # where a quantized model's config records its QuantConfig


@dataclass(frozen=True)
class QuantConfig:
    """A fake-quantization setting for the linear layers inside a model's blocks.

    ``format``: ``none``, ``int8``, ``int4``, ``fp4`` (OCP MX E2M1) or ``fp4-e1m2`` (the Stable-SPAM
    paper's FP4); ``group_size``: entries per quantization group along a layer's input dimension (not
    used by ``int8``, which is per channel and per token); ``activations``: quantize the layers' inputs
    too, not only their weights.

    Example::

        quant = QuantConfig(format="int4", group_size=32, activations=True)
        replaced = quantize_model(model, quant)
    """

    format: str = "none"
    group_size: int = 256
    activations: bool = True

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise ValueError(f"unknown quantization format {self.format!r}: use one of "
                             f"{', '.join(QUANT_FORMATS)}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) \
                or self.group_size < MIN_GROUP_SIZE:
            raise ValueError(f"invalid quantization group_size={self.group_size!r}: must be an integer >= "
                             f"{MIN_GROUP_SIZE} (the outlier rule keeps 2 entries of each group exact)")
        if not isinstance(self.activations, bool):
            raise ValueError(f"quantization activations={self.activations!r} must be true or false")

    @property
    def enabled(self) -> bool:
        return self.format != "none"

    @property
    def grouped(self) -> bool:
        """Whether layers must have an input width that ``group_size`` divides."""
        return self.enabled and FORMATS[self.format].grouped

    def _quantizer(self, operand: str) -> Quantizer:
        if not self.enabled:
            raise ValueError("format 'none' quantizes nothing: it has no quantizer")
        group_size = self.group_size if self.grouped else None
        return partial(getattr(FORMATS[self.format], operand), group_size=group_size)

    def weight_quantizer(self) -> Quantizer:
        """The fake quantizer of a weight of shape (out_features, in_features)."""
        return self._quantizer("weight")

    def activation_quantizer(self) -> Quantizer | None:
        """The fake quantizer of a layer's input (..., in_features), or None when activations stay exact."""
        return self._quantizer("activation") if self.activations else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_model_config(cls, config: Any) -> QuantConfig:
        """The setting a model config records (see ``quantize_model``); ``format="none"`` if it has none."""
        recorded = getattr(config, CONFIG_KEY, None)
        return cls(**recorded) if recorded else cls()
