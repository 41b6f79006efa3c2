"""How much a grid's validation losses wobble from the evaluation alone, measured on two trained models.

    python benchmarks/eval_noise.py benchmarks/results/stability/runs/clean/adamw/seed0 \\
                                    benchmarks/results/stability/runs/clean/spam/seed0

Rebuilds the runs' validation split as the trainer does and takes the loss of every validation batch with each
run's final model. Validation batches are consecutive blocks of documents, so neighbouring batches are alike:
the spread is measured over disjoint subsets of 8 consecutive batches (the evaluation the grids used before),
and the whole split is treated as that many such subsets. Two numbers matter:

- the level: how far one model's loss on a subset, or on the whole split, can sit from the loss it would
  have on unlimited data of the same kind;
- the difference: how far the gap between two models measured on a subset, or on the whole split, can sit
  from their gap on unlimited data. Every run of a grid is evaluated on the same split, so a difference
  between optimizers carries this noise, not the level's.

Writes ``eval_noise.json`` and ``eval_noise.md`` into the grid's folder, where the grid reports read it: a
run directory is ``<grid>/runs/<regime>/<variant>/seed<k>``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from pathlib import Path

import torch

SUBSET_BATCHES = 8


@torch.no_grad()
def batch_losses(run_dir: Path) -> tuple[list[float], int]:
    """The mean loss of every validation batch of the run, with its final model; and tokens per batch."""
    from spam_opt import run_files
    from trainers.config import from_dict, read_yaml
    from trainers.data import build_splits, load_documents, make_batches, make_tokenizer
    from trainers.models import build_model

    cfg = from_dict(read_yaml(run_dir / run_files.CONFIG))
    docs = load_documents(cfg.dataset, cfg.text_field, max_mb=cfg.corpus_max_mb, cache_dir=cfg.cache_dir)
    tokenizer = make_tokenizer(cfg.tokenizer, docs, cfg.bpe_vocab_size, cfg.text_field,
                               saved=run_dir / run_files.TOKENIZER)
    splits = build_splits(docs, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.text_field, cfg.stream_val_docs)
    batches = make_batches(splits.val, cfg.batch_size, cfg.seed, shuffle=False, name="validation")
    model = build_model(str(run_dir / run_files.FINAL), len(tokenizer), cfg.seq_len).eval()
    losses = [float(model(input_ids=batches[i], labels=batches[i]).loss) for i in range(len(batches))]
    return losses, cfg.batch_size * cfg.seq_len


def spread(values: list[float]) -> tuple[float, float]:
    """(std of the mean over disjoint subsets of SUBSET_BATCHES, its standard error over the whole list)."""
    subsets = [statistics.fmean(values[i:i + SUBSET_BATCHES])
               for i in range(0, len(values) - SUBSET_BATCHES + 1, SUBSET_BATCHES)]
    std = statistics.stdev(subsets)
    return std, std / math.sqrt(len(subsets))


def measure(first: Path, second: Path) -> dict[str, object]:
    a, tokens = batch_losses(first)
    b, _ = batch_losses(second)
    level_subset, level_whole = spread(a)
    diff_subset, diff_whole = spread([x - y for x, y in zip(a, b)])
    return {
        "runs": [str(first), str(second)], "batches": len(a), "tokens": len(a) * tokens,
        "subset_tokens": SUBSET_BATCHES * tokens, "losses": [statistics.fmean(a), statistics.fmean(b)],
        "level_subset_std": level_subset, "level_whole_se": level_whole,
        "diff_subset_std": diff_subset, "diff_whole_se": diff_whole,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs=2, help="two finished runs of a grid (with final/)")
    args = parser.parse_args(argv)
    from spam_opt import run_files

    for run_dir in args.run_dirs:
        if not (run_dir / run_files.FINAL).is_dir():
            parser.error(f"{run_dir} holds no final/ model: give a finished run of a grid")
    noise = measure(*args.run_dirs)
    out = args.run_dirs[0].parents[3]
    (out / "eval_noise.json").write_text(json.dumps(noise, indent=1))
    first, second = (shlex.quote(str(p)) for p in args.run_dirs)  # run names hold spaces
    (out / "eval_noise.md").write_text(
        f"# Evaluation noise\n\nCommand: `python benchmarks/eval_noise.py {first} {second}`\n\n"
        f"Two trained models, the loss of each of the {noise['batches']} validation batches "
        f"({noise['tokens']} tokens); spreads over disjoint subsets of {SUBSET_BATCHES} consecutive batches "
        f"({noise['subset_tokens']} tokens, the evaluation the grids used before):\n\n"
        "| | one model's loss | the difference between the two |\n|---|---|---|\n"
        f"| {SUBSET_BATCHES}-batch evaluation (std) | {noise['level_subset_std']:.4f} | "
        f"{noise['diff_subset_std']:.4f} |\n"
        f"| whole split, as the grids evaluate now (standard error) | {noise['level_whole_se']:.4f} | "
        f"{noise['diff_whole_se']:.4f} |\n\n"
        "Every run of a grid is evaluated on the same split, so a difference between two rows carries the "
        "noise of the last column: differences well above it are the optimizers', not the evaluation's.\n")
    print(json.dumps(noise, indent=1))
    return noise


if __name__ == "__main__":
    main()
