"""``quantize_model``: put QuantLinear layers in place of a model's block linears."""

from __future__ import annotations

import logging
import math

from torch import nn

from trainers.quant.config import CONFIG_KEY, MIN_GROUP_SIZE, QuantConfig
from trainers.quant.linear import QuantLinear, SharedInputs

logger = logging.getLogger(__name__)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's ``nn.Linear`` layers except its LM head (and any already quantized), by name.

    Embeddings and norms are not linears; the head is excluded by identity, as the model reports it.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and module is not head]


def _suggested_group_size(widths: list[int], requested: int) -> int | None:
    """The largest group size up to ``requested`` that divides every width (None: none >= the minimum)."""
    common = math.gcd(*widths)
    fits = [d for d in range(min(common, requested), MIN_GROUP_SIZE - 1, -1) if common % d == 0]
    return fits[0] if fits else None


def _check_group_size(layers: list[tuple[str, nn.Linear]], group_size: int) -> None:
    bad = [(name, layer.in_features) for name, layer in layers if layer.in_features % group_size]
    if not bad:
        return
    (name, width), more = bad[0], len(bad) - 1
    widths = sorted({layer.in_features for _, layer in layers})
    suggestion = _suggested_group_size(widths, group_size)
    fix = (f"pass --quant-group-size {suggestion} (group_size={suggestion}), which divides every quantized "
           f"layer's input width ({', '.join(map(str, widths))})" if suggestion else
           "no group size divides every quantized layer's input width "
           f"({', '.join(map(str, widths))}); use --quant int8, which quantizes per channel")
    also = f" (and {more} more layer{'s' if more > 1 else ''})" if more else ""
    raise ValueError(f"quantization group size {group_size} does not divide the input width of layer "
                     f"{name!r} ({width}){also}: {fix}")


def _record(model: nn.Module, quant: QuantConfig) -> None:
    """Write ``quant`` into the model's config (``save_pretrained`` saves it); warn if it replaces another."""
    config = getattr(model, "config", None)
    if config is None:
        return
    recorded = QuantConfig.from_model_config(config)
    if recorded.enabled and recorded != quant:
        logger.warning("the model's config records fake quantization %s; the model now runs with %s",
                       recorded, quant)
    if quant.enabled:
        setattr(config, CONFIG_KEY, quant.to_dict())
    elif hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)


def quantize_model(model: nn.Module, quant: QuantConfig) -> list[str]:
    """Replace the linear layers inside ``model``'s blocks by QuantLinear, in place; return their names.

    The LM head, embeddings and norms are left alone. ``quant`` is recorded in ``model.config`` (when the
    model has one) under ``fake_quantization``, so that ``save_pretrained`` keeps it beside the
    full-precision weights and ``QuantConfig.from_model_config(model.config)`` gives it back after
    ``from_pretrained``. Call it before building the optimizer or wrapping the model (DDP, Accelerate).
    Raises ValueError when ``group_size`` does not divide a layer's input width (naming the layer and a
    group size that fits), when the model has no such layer, or when it is already quantized.

    Example::

        replaced = quantize_model(model, QuantConfig(format="int4", group_size=32))
        # reloaded = AutoModelForCausalLM.from_pretrained(path)
        # quantize_model(reloaded, QuantConfig.from_model_config(reloaded.config))
    """
    if any(isinstance(module, QuantLinear) for module in model.modules()):
        raise ValueError(f"{type(model).__name__} is already quantized; build the model afresh to quantize "
                         "it with another setting")
    layers = quantizable_layers(model) if quant.enabled else []
    if quant.enabled and not layers:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantize (only torch.nn.Linear "
                         "layers outside the LM head are); use --quant none, or a LLaMA or SpikeGPT preset")
    if quant.grouped:
        _check_group_size(layers, quant.group_size)
    _record(model, quant)
    inputs = SharedInputs()
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, QuantLinear.wrap(layer, quant, inputs))
    return [name for name, _ in layers]
