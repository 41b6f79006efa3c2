"""Turn a sharded (``--fsdp``) checkpoint into a plain ``save_pretrained`` folder, in one process.

    python -m trainers.export runs/llama-60m-spam/checkpoints/step_2000 llama-60m-step2000

The checkpoint's run directory supplies the model (its ``config.yaml``) and the tokenizer (``tokenizer/``);
the weights are read from the checkpoint's shards, whatever number of processes wrote them. The output loads
with ``AutoModelForCausalLM.from_pretrained`` (SpikeGPT: ``SpikeGPTForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from spam_opt import run_files
from trainers.checkpointing import checkpoint_format, verify
from trainers.config import from_dict, read_yaml
from trainers.models import build_model
from trainers.sharded_checkpoint import ShardedState
from trainers.tokenizer import load_tokenizer


def save_plain(model: nn.Module, state_dict: dict[str, Tensor], tokenizer: Any, out: Path) -> None:
    """Write ``model`` with the weights ``state_dict`` and ``tokenizer`` as a ``save_pretrained`` folder."""
    model.save_pretrained(str(out), state_dict=state_dict)
    tokenizer.save_pretrained(str(out))


def export(checkpoint: Path, out: Path) -> Path:
    """Write the weights of the sharded ``checkpoint`` (``RUN_DIR/checkpoints/step_N``) to ``out``."""
    import torch.distributed.checkpoint as dcp

    problem = verify(checkpoint) if checkpoint.is_dir() else "no such checkpoint directory"
    if problem is not None:
        raise ValueError(f"cannot export {checkpoint}: {problem}")
    if checkpoint_format(checkpoint) != ShardedState.format:
        raise ValueError(f"{checkpoint} is not a sharded (--fsdp) checkpoint; the run's final/ folder, or "
                         "Accelerate's model file in the checkpoint, is already a plain model")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} is not empty: choose a new one")
    run_dir = checkpoint.parent.parent
    cfg = from_dict(read_yaml(run_dir / run_files.CONFIG), where=str(run_dir / run_files.CONFIG))
    tokenizer = load_tokenizer(run_dir / run_files.TOKENIZER)
    model = build_model(cfg.model, len(tokenizer), cfg.seq_len, tokenizer.eos_token_id)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the point here
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)  # reshards: this one process reads all
    save_plain(model, state["model"], tokenizer, out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m trainers.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder of an --fsdp run (.../step_N)")
    parser.add_argument("out", type=Path, help="the folder to write (must be new or empty)")
    args = parser.parse_args(argv)
    out = export(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        sys.exit(f"error: {err}")
