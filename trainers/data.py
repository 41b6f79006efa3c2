"""The data pipeline: ``datasets`` from source to fixed-length token blocks, and deterministic batches.

Sources: the built-in corpus (the Python standard library's own source files, ~30 MB, offline), local
text / JSONL / JSON / Parquet files (a file or a folder), or a hub dataset name. Documents are split into
train and validation first (so no document straddles the two), tokenized with ``datasets.map`` (batched,
cached), and packed into blocks of ``seq_len`` tokens with an end-of-text token between documents.

Batches are a pure function of (seed, micro-batch number): that is what makes resuming exact. With
``streaming`` (large hub datasets), the documents are read in one pass without a full download; the first
``stream_val_docs`` documents are the validation split and resuming re-reads the stream up to its position.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

# Local files: extension -> datasets builder.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_SEED = 1234  # the train/validation split does not move with the training seed


def builtin_corpus_files(max_mb: float = 0.0) -> list[Path]:
    """The standard library's ``.py`` files (no site-packages), at most ``max_mb`` MB of them (0: all).

    The subset is deterministic and spread over the whole library: files are taken in the order of a
    hash of their relative path until the budget is reached.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    files.sort(key=lambda p: zlib.crc32(str(p.relative_to(root)).encode()))
    if max_mb <= 0:
        return files
    budget, chosen = max_mb * 2**20, []
    for path in files:
        size = path.stat().st_size
        if size <= budget:
            chosen.append(path)
            budget -= size
    return chosen


def _local_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {source!r}: no such file or folder (local data files must exist)")
    files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"dataset folder {source!r} holds no {'/'.join(BUILDERS)} files")
    kinds = {BUILDERS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) > 1:
        raise ValueError(f"dataset {source!r}: files must all be one of {', '.join(BUILDERS)}, "
                         f"got {sorted({p.suffix for p in files})}")
    return files


def _is_local(source: str) -> bool:
    return Path(source).suffix in BUILDERS or source.startswith((".", "/", "~")) or Path(source).exists()


class BadRecordError(ValueError):
    """A local data file holds a record that is not UTF-8, or (JSON) not a JSON object with a text field."""


def _bad_record(line: bytes, builder: str, text_field: str) -> str | None:
    """Why one line of a local file cannot be read as a record, or None."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 ({err.reason} at byte {err.start})"
    if builder != "json" or not text.strip():
        return None
    try:
        record = json.loads(text)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if record.get(text_field) is not None and not isinstance(record[text_field], str):
        return f"field {text_field!r} is a {type(record[text_field]).__name__}, not a string"
    return None


def _is_one_json_document(path: Path) -> bool:
    """A ``.json`` file holding one JSON value (an array of records), rather than JSON Lines."""
    try:
        json.loads(path.read_bytes())
        return True
    except ValueError:
        return False


def screen_records(source: str, text_field: str = "text", *, skip: bool = False,
                   cache_dir: str | None = None) -> tuple[str, int]:
    """Check every record of local text and JSON Lines files before ``datasets`` reads them.

    A record that is not UTF-8 (or, in JSON Lines, not a JSON object whose ``text_field`` is a string) is a
    ``BadRecordError`` naming the file and the line; with ``skip``, such lines are left out of cleaned
    copies (written once, under the datasets cache) and counted. Returns the source to load (``source``
    itself, or the folder of cleaned copies) and the number of records skipped. Other sources pass as is.
    """
    if source == "builtin" or not _is_local(source):
        return source, 0
    files = _local_files(source)
    builder = BUILDERS[files[0].suffix]
    if builder not in ("text", "json"):
        return source, 0
    bad: dict[Path, list[int]] = {}
    for path in files:
        if path.suffix == ".json" and _is_one_json_document(path):
            continue
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                why = _bad_record(line, builder, text_field)
                if why is None:
                    continue
                if not skip:
                    raise BadRecordError(f"{path}, line {number}: the record is {why}; fix or remove the "
                                         "line, or pass --skip-bad-records to skip such records (counted in "
                                         "metrics.jsonl as skipped_records)")
                bad.setdefault(path, []).append(number)
    if not bad:
        return source, 0
    return str(_cleaned_copies(files, bad, cache_dir)), sum(map(len, bad.values()))


def _cleaned_copies(files: list[Path], bad: dict[Path, list[int]], cache_dir: str | None) -> Path:
    """A folder of ``files`` with the ``bad`` lines left out; the same folder for the same files."""
    import datasets

    key = hashlib.sha256(json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                                     for p in files]).encode()).hexdigest()[:16]
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "spam-opt-cleaned" / key
    for i, path in enumerate(files):
        out = folder / f"{i:05d}-{path.name}"  # the files' order is kept
        if out.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        skipped, partial = set(bad.get(path, ())), out.with_name(f".{out.name}.partial")
        with path.open("rb") as src, partial.open("wb") as dst:
            dst.writelines(line for number, line in enumerate(src, start=1) if number not in skipped)
        os.replace(partial, out)
    return folder


def load_documents(source: str, text_field: str = "text", *, max_mb: float = 0.0,
                   dataset_config: str | None = None, cache_dir: str | None = None,
                   streaming: bool = False) -> Dataset | IterableDataset:
    """One ``Dataset`` (an ``IterableDataset`` when ``streaming``) of documents in column ``text_field``."""
    import datasets

    if source == "builtin":
        files = builtin_corpus_files(max_mb)
        ds = datasets.load_dataset("text", data_files=[str(p) for p in files], sample_by="document",
                                   split="train", cache_dir=cache_dir, encoding_errors="replace",
                                   streaming=streaming)
    elif _is_local(source):
        files = _local_files(source)
        builder = BUILDERS[files[0].suffix]
        options = {"sample_by": "paragraph"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                   cache_dir=cache_dir, streaming=streaming, **options)
    else:
        try:
            ds = datasets.load_dataset(source, dataset_config, split="train", cache_dir=cache_dir,
                                       streaming=streaming)
        except (ConnectionError, OSError) as err:
            raise ValueError(f"could not load hub dataset {source!r} ({err}); without a reachable hub, "
                             "pass local files or 'builtin'") from err
    first = list(ds.take(1000)) if streaming else ds.select(range(min(ds.num_rows, 1000)))
    columns = list(first[0]) if len(first) else []
    if columns and text_field not in columns:
        raise ValueError(f"dataset {source!r} has no column {text_field!r} (columns: {columns}); "
                         "set --text-field")
    if not any(row[text_field] for row in first):
        raise ValueError(f"dataset {source!r} is empty: no text in column {text_field!r}")
    return ds.select_columns([text_field])


def tokenize_and_pack(docs: Dataset | IterableDataset, tokenizer: Any, seq_len: int,
                      text_field: str = "text") -> Dataset | IterableDataset:
    """Blocks of exactly ``seq_len`` token ids (column ``input_ids``), documents separated by EOS."""
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return {"ids": [ids + [eos] for ids in tokenizer(batch[text_field])["input_ids"]]}

    def pack(batch: dict[str, list]) -> dict[str, list]:
        stream = [t for ids in batch["ids"] for t in ids]
        usable = len(stream) // seq_len * seq_len  # the tail of each map batch is dropped
        return {"input_ids": [stream[i: i + seq_len] for i in range(0, usable, seq_len)]}

    if _is_stream(docs):  # lazy: tokenized as the stream is read
        return docs.map(tokenize, batched=True, remove_columns=[text_field]).map(
            pack, batched=True, batch_size=1000, remove_columns=["ids"])
    tokens = docs.map(tokenize, batched=True, remove_columns=docs.column_names, desc="tokenize")
    blocks = tokens.map(pack, batched=True, batch_size=1000, remove_columns=["ids"], desc=f"pack {seq_len}")
    return blocks.with_format("torch")


def _is_stream(ds: Any) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


@dataclass
class Splits:
    train: Dataset | IterableDataset
    val: Dataset | IterableDataset
    tune: Dataset | None = None  # held out for choosing hyperparameters, disjoint from train and val


def build_splits(docs: Dataset | IterableDataset, tokenizer: Any, seq_len: int, val_fraction: float,
                 text_field: str = "text", stream_val_docs: int = 1000, tune_fraction: float = 0.0) -> Splits:
    """Held-out documents for validation, then tokenized and packed train and validation blocks.

    With ``tune_fraction`` > 0 a further ``tune_fraction`` of the documents is held out of training as a
    tuning split, for choosing hyperparameters (a learning rate) on data the reported validation loss does
    not use. The validation documents are the same with or without it.
    """
    if _is_stream(docs):
        if tune_fraction:
            raise ValueError("tune_fraction needs a dataset that is not streamed (a streamed one holds out "
                             "only its first documents); drop --tune-fraction or --streaming")
        return Splits(tokenize_and_pack(docs.skip(stream_val_docs), tokenizer, seq_len, text_field),
                      tokenize_and_pack(docs.take(stream_val_docs), tokenizer, seq_len, text_field))
    if docs.num_rows < 2:
        raise ValueError(f"the corpus has {docs.num_rows} document(s); it needs at least 2 to hold one out")
    parts = docs.train_test_split(test_size=val_fraction, seed=SPLIT_SEED)
    pack = lambda part: tokenize_and_pack(part, tokenizer, seq_len, text_field)  # noqa: E731
    if not tune_fraction:
        return Splits(pack(parts["train"]), pack(parts["test"]))
    if parts["train"].num_rows < 2:
        raise ValueError(f"the corpus has {docs.num_rows} documents, too few to hold out a tuning split too")
    # A fraction of the whole corpus, taken from the training documents: validation does not move.
    rest = parts["train"].train_test_split(test_size=tune_fraction / (1.0 - val_fraction),
                                           seed=SPLIT_SEED + 1)
    return Splits(pack(rest["train"]), pack(parts["test"]), pack(rest["test"]))


class BlockBatches:
    """Deterministic micro-batches of one process.

    Global micro-batch ``i`` (counted from the start of training) takes ``batch_size * num_processes`` blocks
    from a permutation of the blocks drawn from ``(seed, epoch)``; process ``rank`` gets its slice of them.
    No state: resuming at micro-batch ``i`` gives exactly what the uninterrupted run got.

    Example::

        batches = BlockBatches(splits.train, batch_size=8, seed=0)
        first = batches[0]  # LongTensor [8, seq_len]
    """

    def __init__(self, blocks: Dataset, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 shuffle: bool = True, name: str = "train") -> None:
        self.blocks, self.batch_size, self.seed, self.rank = blocks, batch_size, seed, rank
        self.shuffle, self.global_batch = shuffle, batch_size * num_processes
        self.per_epoch = len(blocks) // self.global_batch
        self._epoch_order: tuple[int, Tensor] = (-1, torch.empty(0))
        if self.per_epoch == 0:
            raise ValueError(
                f"the {name} split has {len(blocks)} blocks, fewer than one global batch "
                f"(batch_size {batch_size} x {num_processes} processes); use more data "
                "(--corpus-max-mb, --dataset), a smaller --batch-size or a shorter --seq-len"
            )

    def __len__(self) -> int:
        return self.per_epoch

    def _order(self, epoch: int) -> Tensor:
        if self._epoch_order[0] != epoch:  # drawn once per epoch, not per batch
            n, gen = len(self.blocks), torch.Generator().manual_seed(self.seed + epoch)
            self._epoch_order = (epoch, torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n))
        return self._epoch_order[1]

    def __getitem__(self, index: int) -> Tensor:
        epoch, i = divmod(index, self.per_epoch)
        start = i * self.global_batch + self.rank * self.batch_size
        picked = self._order(epoch)[start: start + self.batch_size]
        return self.blocks[picked.tolist()]["input_ids"]


class StreamBatches:
    """Micro-batches of one process from a streamed split, read in one pass.

    Same contract as ``BlockBatches``: global micro-batch ``i`` is the ``i``-th run of ``batch_size *
    num_processes`` blocks of the (buffer-shuffled, seeded) stream, and process ``rank`` gets its slice.
    Reading the batches in order costs nothing extra; jumping (a resume, a new evaluation) re-reads the
    stream from its start up to the position.
    """

    def __init__(self, blocks: IterableDataset, batch_size: int, seed: int, rank: int = 0,
                 num_processes: int = 1, shuffle: bool = True, name: str = "train",
                 buffer_size: int = 10_000) -> None:
        self.blocks = blocks.shuffle(seed=seed, buffer_size=buffer_size) if shuffle else blocks
        self.batch_size, self.rank, self.shuffle, self.name = batch_size, rank, shuffle, name
        self.global_batch = batch_size * num_processes
        self._stream: Any = None
        self._next = -1

    def __len__(self) -> int:
        return sum(1 for _ in self.blocks.iter(self.global_batch, drop_last_batch=True))

    def __getitem__(self, index: int) -> Tensor:
        if index != self._next:
            stream = self.blocks.iter(self.global_batch, drop_last_batch=True)
            self._stream, self._next = itertools.islice(stream, index, None), index
        try:
            batch = next(self._stream)["input_ids"]
        except StopIteration:
            raise ValueError(f"the streamed {self.name} split ran out at micro-batch {index}: streams "
                             "are read once; lower --max-steps or --eval-batches") from None
        self._next += 1
        start = self.rank * self.batch_size
        return torch.tensor(batch[start: start + self.batch_size])


def make_batches(blocks: Dataset | IterableDataset, batch_size: int, seed: int, rank: int = 0,
                 num_processes: int = 1, shuffle: bool = True,
                 name: str = "train") -> BlockBatches | StreamBatches:
    """``StreamBatches`` for a streamed split, ``BlockBatches`` otherwise."""
    kind = StreamBatches if _is_stream(blocks) else BlockBatches
    return kind(blocks, batch_size, seed, rank, num_processes, shuffle=shuffle, name=name)


def make_tokenizer(name: str, docs: Dataset | IterableDataset, vocab_size: int, text_field: str = "text",
                   saved: Path | None = None, bpe_stream_docs: int = 20_000) -> Any:
    """'byte', 'bpe' (trained on ``docs``, or loaded from ``saved`` when a run resumes), or a local dir."""
    from trainers import tokenizer as tk

    if name == "byte":
        return tk.byte_tokenizer()
    if name == "bpe":
        if saved is not None and saved.is_dir():
            return tk.load_tokenizer(saved)
        if _is_stream(docs):  # a sample of the stream is enough to learn merges
            texts = (row[text_field] for row in docs.take(bpe_stream_docs))
        else:
            texts = (docs[i: i + 1000][text_field] for i in range(0, docs.num_rows, 1000))
        return tk.train_bpe(texts, vocab_size)
    return tk.load_tokenizer(name)
