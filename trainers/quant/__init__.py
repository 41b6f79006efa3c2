"""Quantization-aware training by simulated ("fake") quantization, as in the Stable-SPAM paper.

The linear layers inside a model's blocks compute with weights (and inputs) rounded to a low-bit format
in the forward pass; the matmul itself runs in the working precision, and master weights, gradients and
optimizer state stay full precision. Gradients pass the rounding unchanged (straight-through estimator).

    from trainers.quant import QuantConfig, quantize_model
    replaced = quantize_model(model, QuantConfig(format="int4", group_size=32, activations=True))

See docs/training.md ("Low-bit training") for the formats and what they cost.
"""

from trainers.quant.config import FORMATS, QUANT_FORMATS, QuantConfig
from trainers.quant.linear import QuantLinear
from trainers.quant.model import quantizable_layers, quantize_model

__all__ = ["FORMATS", "QUANT_FORMATS", "QuantConfig", "QuantLinear", "quantizable_layers", "quantize_model"]
