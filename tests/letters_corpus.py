"""The synthetic corpus of the multi-process trainer tests: 200 JSONL documents of repeated letters."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_letters_corpus(path: Path) -> Path:
    """Write the corpus to ``path`` (enough 32-token blocks for a few global batches of 8); return it."""
    rng = random.Random(1)
    docs = [" ".join(rng.choice("abcdefgh") * 3 for _ in range(60)) for _ in range(200)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path
