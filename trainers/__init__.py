"""Accelerate pretraining of LLaMA-style and SpikeGPT-style language models with spam-opt's optimizers."""

import logging

# torchao, where installed (a peer of the memory benchmarks), is imported by transformers at each model build.
# On a CPU-only machine it warns about each CUDA extension it cannot load, and torch about its use of a
# deprecated registration: noise, not errors, for a trainer that does not use torchao; only these go.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").addFilter(
    lambda record: "is an Enum subclass" not in record.getMessage())
