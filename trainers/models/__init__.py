"""The model registry: LLaMA presets at the SPAM paper's sizes, SpikeGPT presets, and local configs.

Models are always built from a config, never downloaded: a preset name, or a local directory (or
``config.json`` path) of any Hugging Face causal LM. A directory that also holds weights (a ``final/``
of an earlier run) is loaded with its weights. The vocabulary comes from the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from trainers.models.spikegpt import SPIKEGPT_PRESETS, SpikeGPTConfig, SpikeGPTForCausalLM

# Sizes of the SPAM paper's LLaMA configs (the GaLore family of configs); the "Nm" in a name counts
# parameters with the paper's 32k vocabulary, so with the byte tokenizer the models are smaller.
LLAMA_PRESETS: dict[str, dict[str, int]] = {
    name: dict(hidden_size=h, intermediate_size=i, num_attention_heads=a, num_hidden_layers=n, **extra)
    for name, h, i, a, n, extra in [
        ("llama-tiny", 32, 64, 2, 2, {"max_position_embeddings": 256}),  # tests
        ("llama-9m", 128, 352, 4, 4, {}),  # the README's CPU run (about 1M parameters with bytes)
        ("llama-20m", 256, 688, 4, 4, {}),
        ("llama-35m", 384, 1024, 8, 6, {}),
        ("llama-60m", 512, 1376, 8, 8, {}),
        ("llama-130m", 768, 2048, 12, 12, {}),
        ("llama-350m", 1024, 2736, 16, 24, {}),
        ("llama-1b", 2048, 5461, 32, 24, {}),
    ]
}
_LLAMA_DEFAULTS = dict(max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False)

# Names of the context length in model configs: LLaMA and most HF models, GPT-2, SpikeGPT.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "ctx_len")


def available_models() -> list[str]:
    return [*LLAMA_PRESETS, *SPIKEGPT_PRESETS]


def context_length(config: Any) -> int | None:
    return next((getattr(config, k) for k in _CONTEXT_KEYS if getattr(config, k, None)), None)


def _from_local(path: Path, vocab_size: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = path.parent if path.is_file() else path
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.vocab_size != vocab_size:
        raise ValueError(f"vocabulary mismatch: the model config in {folder} has "
                         f"vocab_size={config.vocab_size} but the tokenizer has {vocab_size} tokens; use the "
                         "tokenizer the model was made for or set vocab_size in the config")
    if any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    return AutoModelForCausalLM.from_config(config)


def build_model(name: str, vocab_size: int, seq_len: int, eos_token_id: int | None = None) -> nn.Module:
    """A freshly initialised causal LM (or a local one with its weights) for ``vocab_size`` tokens.

    Raises ValueError when ``seq_len`` exceeds the model's context or the vocabulary does not match.

    Example::

        model = build_model("llama-tiny", vocab_size=257, seq_len=64)
    """
    if name in LLAMA_PRESETS:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**{**_LLAMA_DEFAULTS, **LLAMA_PRESETS[name]}, vocab_size=vocab_size,
                             bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
        model = LlamaForCausalLM(config)
    elif name in SPIKEGPT_PRESETS:
        model = SpikeGPTForCausalLM(SpikeGPTConfig(**SPIKEGPT_PRESETS[name], vocab_size=vocab_size,
                                                   bos_token_id=eos_token_id, eos_token_id=eos_token_id))
    elif Path(name).exists():
        model = _from_local(Path(name), vocab_size)
    else:
        raise ValueError(f"unknown model {name!r}: use a preset ({', '.join(available_models())}) "
                         "or a local directory holding a config.json")
    context = context_length(model.config)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len={seq_len} is longer than the context of model {name!r} "
                         f"({context} tokens); lower --seq-len")
    return model
