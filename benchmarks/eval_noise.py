"""How much a grid's validation loss wobbles from the evaluation alone, measured on one of its trained models.

    python benchmarks/eval_noise.py benchmarks/results/stability/runs/clean/adamw/seed0

Rebuilds the run's validation split as the trainer does, takes the loss of every validation batch with the
run's final model, and reports (a) the spread (std) of the mean loss over disjoint subsets the size of the
evaluation the grids used before (8 batches), and (b) the standard error of the mean over the whole split,
which is what the grids evaluate on now. Writes ``eval_noise.json`` and ``eval_noise.md`` into the grid's
folder (the run directory's ``runs/../..``), where the grid reports read it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

OLD_EVAL_BATCHES = 8


@torch.no_grad()
def batch_losses(run_dir: Path) -> tuple[list[float], int]:
    """The mean loss of every validation batch of the run, with its final model; and tokens per batch."""
    from trainers.config import from_dict, read_yaml
    from trainers.data import build_splits, load_documents, make_batches, make_tokenizer
    from trainers.models import build_model

    cfg = from_dict(read_yaml(run_dir / "config.yaml"))
    docs = load_documents(cfg.dataset, cfg.text_field, max_mb=cfg.corpus_max_mb, cache_dir=cfg.cache_dir)
    tokenizer = make_tokenizer(cfg.tokenizer, docs, cfg.bpe_vocab_size, cfg.text_field,
                               saved=run_dir / "tokenizer")
    splits = build_splits(docs, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.text_field, cfg.stream_val_docs)
    batches = make_batches(splits.val, cfg.batch_size, cfg.seed, shuffle=False, name="validation")
    model = build_model(str(run_dir / "final"), len(tokenizer), cfg.seq_len).eval()
    losses = [float(model(input_ids=batches[i], labels=batches[i]).loss) for i in range(len(batches))]
    return losses, cfg.batch_size * cfg.seq_len


def measure(run_dir: Path) -> dict[str, float]:
    losses, tokens = batch_losses(run_dir)
    n = len(losses)
    subsets = [statistics.fmean(losses[i:i + OLD_EVAL_BATCHES])
               for i in range(0, n - OLD_EVAL_BATCHES + 1, OLD_EVAL_BATCHES)]
    return {
        "run": str(run_dir), "batches": n, "tokens": n * tokens, "mean_loss": statistics.fmean(losses),
        "old_eval_tokens": OLD_EVAL_BATCHES * tokens,
        "old_eval_std": statistics.stdev(subsets),
        "whole_split_se": statistics.stdev(losses) / math.sqrt(n),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run of a grid (holds final/ and config.yaml)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "final").is_dir():
        parser.error(f"{args.run_dir} holds no final/ model: give a finished run of a grid")
    noise = measure(args.run_dir)
    out = args.run_dir.parents[2]
    (out / "eval_noise.json").write_text(json.dumps(noise, indent=1))
    (out / "eval_noise.md").write_text(
        f"# Evaluation noise\n\nCommand: `python benchmarks/eval_noise.py {args.run_dir}`\n\n"
        f"One trained model ({args.run_dir}), the loss of each of the {noise['batches']} validation batches "
        f"({noise['tokens']} tokens in all):\n\n"
        f"- an evaluation on {OLD_EVAL_BATCHES} batches ({noise['old_eval_tokens']} tokens, as the grids "
        f"used before) wobbles by {noise['old_eval_std']:.4f} nats (std over disjoint subsets);\n"
        f"- the whole split, which the grids evaluate on now, has a standard error of "
        f"{noise['whole_split_se']:.4f} nats (batch losses treated as independent).\n")
    print(json.dumps(noise, indent=1))
    return noise


if __name__ == "__main__":
    sys.exit(main() and 0)
