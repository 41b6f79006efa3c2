"""The quantization-aware linear layer: full-precision parameters, fake-quantized matmul operands."""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.quant.config import QuantConfig, Quantizer
from trainers.quant.fake_quant import straight_through


class SharedInputs:
    """Remembers the last quantized layer input, for the next layer that reads the same tensor.

    LLaMA's q/k/v projections read one tensor, and so do gate/up: quantized once, it is also saved once
    for the backward pass, as the unquantized model saves it once. A hit needs the very same tensor,
    unmodified (its version counter), in the same grad mode; copies and pickles start empty.
    """

    def __init__(self) -> None:
        self._source: weakref.ref[Tensor] | None = None
        self._key: tuple[int, bool] | None = None
        self._output: Tensor | None = None

    def quantize(self, quantizer: Quantizer, x: Tensor) -> Tensor:
        key = (x._version, torch.is_grad_enabled())
        if self._source is not None and self._source() is x and self._key == key:
            return self._output
        output = straight_through(quantizer, x)
        self._source, self._key, self._output = weakref.ref(x), key, output
        return output

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose forward pass sees its weight (and input) rounded by ``quant``'s format.

    The parameters stay what they were (same tensors, same names, full precision), so the optimizer,
    checkpoints and ``state_dict`` see an ordinary linear layer; gradients reach them through the
    straight-through estimator. Layers given the same ``inputs`` (``quantize_model`` gives one to all
    the layers of a model) quantize a tensor they all read only once.

    Example::

        layer = QuantLinear.wrap(nn.Linear(64, 32), QuantConfig(format="int4", group_size=32))
        y = layer(torch.randn(8, 64))
    """

    quant: QuantConfig

    @classmethod
    def wrap(cls, linear: nn.Linear, quant: QuantConfig, inputs: SharedInputs | None = None) -> QuantLinear:
        """A QuantLinear holding ``linear``'s own parameters (nothing is copied)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        layer.quant = quant
        layer._weight_quantizer = quant.weight_quantizer()
        layer._activation_quantizer = quant.activation_quantizer()
        layer._inputs = inputs or SharedInputs()
        return layer

    def forward(self, input: Tensor) -> Tensor:
        if self._activation_quantizer is not None:
            input = self._inputs.quantize(self._activation_quantizer, input)
        return F.linear(input, straight_through(self._weight_quantizer, self.weight), self.bias)

    def extra_repr(self) -> str:
        q = self.quant
        grouping = f", group_size={q.group_size}" if q.grouped else ""
        return f"{super().extra_repr()}, format={q.format}{grouping}, activations={q.activations}"
