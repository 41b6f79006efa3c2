"""The quantization-aware linear layer: full-precision parameters, fake-quantized matmul operands."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainers.quant.config import QuantConfig
from trainers.quant.fake_quant import straight_through


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose forward pass sees its weight (and input) rounded by ``quant``'s format.

    The parameters stay what they were (same tensors, same names, full precision), so the optimizer,
    checkpoints and ``state_dict`` see an ordinary linear layer; gradients reach them through the
    straight-through estimator.

    Example::

        layer = QuantLinear.wrap(nn.Linear(64, 32), QuantConfig(format="int4", group_size=32))
        y = layer(torch.randn(8, 64))
    """

    quant: QuantConfig

    @classmethod
    def wrap(cls, linear: nn.Linear, quant: QuantConfig) -> QuantLinear:
        """A QuantLinear holding ``linear``'s own parameters (nothing is copied)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        layer.quant = quant
        layer._weight_quantizer = quant.weight_quantizer()
        layer._activation_quantizer = quant.activation_quantizer()
        return layer

    def forward(self, input: Tensor) -> Tensor:
        if self._activation_quantizer is not None:
            input = straight_through(self._activation_quantizer, input)
        return F.linear(input, straight_through(self._weight_quantizer, self.weight), self.bias)

    def extra_repr(self) -> str:
        q = self.quant
        grouping = f", group_size={q.group_size}" if q.grouped else ""
        return f"{super().extra_repr()}, format={q.format}{grouping}, activations={q.activations}"
