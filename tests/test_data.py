"""The data pipeline: built-in corpus, local sources, tokenizers, packing, splits and batch order."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from trainers.data import (
    BadRecordError,
    BlockBatches,
    StreamBatches,
    build_splits,
    builtin_corpus_files,
    load_documents,
    make_tokenizer,
    screen_records,
    tokenize_and_pack,
)
from trainers.tokenizer import byte_tokenizer, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_builtin_corpus_is_the_stdlib_and_its_subset_is_deterministic():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    everything = builtin_corpus_files()
    assert sum(p.stat().st_size for p in everything) > 20 * 2**20  # the design's "about 30 MB"
    assert all(p.suffix == ".py" and stdlib in p.parents for p in everything)
    assert not any("site-packages" in p.parts for p in everything)
    subset = builtin_corpus_files(0.5)
    assert subset == builtin_corpus_files(0.5)
    size = sum(p.stat().st_size for p in subset)
    assert 0.4 * 2**20 < size <= 0.5 * 2**20
    assert len({p.parent for p in subset}) > 3  # spread over the library, not one folder


def test_builtin_documents_are_whole_files(cache_dir):
    docs = load_documents("builtin", max_mb=0.2, cache_dir=cache_dir)
    files = builtin_corpus_files(0.2)
    assert docs.num_rows == len(files)
    texts = set(docs["text"])
    assert files[0].read_text(encoding="utf-8", errors="replace") in texts


def test_byte_tokenizer_is_utf8_bytes_plus_eos():
    tok = byte_tokenizer()
    text = "déf f(x):\n\treturn x ✓ \x00"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert len(tok) == 257 and tok.eos_token_id == 256
    assert tok.decode(ids) == text


def test_packing_matches_a_plain_python_reference():
    from datasets import Dataset

    texts = [f"document {i}: " + "abc é " * (i % 7) for i in range(50)]
    blocks = tokenize_and_pack(Dataset.from_dict({"text": texts}), byte_tokenizer(), seq_len=16)
    stream = [b for t in texts for b in [*t.encode("utf-8"), 256]]
    expected = [stream[i: i + 16] for i in range(0, len(stream) // 16 * 16, 16)]
    assert blocks[:]["input_ids"].tolist() == expected


def test_validation_documents_are_held_out_whole():
    from datasets import Dataset

    # Each document is exactly one block long (15 bytes + EOS), so blocks and documents coincide.
    texts = [f"doc{i:04d}-xxxxxxx" for i in range(200)]
    splits = build_splits(Dataset.from_dict({"text": texts}), byte_tokenizer(), seq_len=16, val_fraction=0.1)
    train = {bytes(b[:-1]).decode() for b in splits.train[:]["input_ids"].tolist()}
    val = {bytes(b[:-1]).decode() for b in splits.val[:]["input_ids"].tolist()}
    assert len(val) == 20 and not train & val and train | val == set(texts)


def _block_docs(split) -> list[str]:
    return [bytes(b[:-1]).decode() for b in split[:]["input_ids"].tolist()]


def test_the_tuning_split_is_held_out_of_training_and_validation_leaves_validation_as_it_was():
    from datasets import Dataset

    # One document per 16-token block again, so each split's blocks name its documents.
    texts = [f"doc{i:04d}-xxxxxxx" for i in range(200)]
    docs = Dataset.from_dict({"text": texts})
    plain = build_splits(docs, byte_tokenizer(), seq_len=16, val_fraction=0.1)
    assert plain.tune is None
    splits = build_splits(docs, byte_tokenizer(), seq_len=16, val_fraction=0.1, tune_fraction=0.15)
    train, val, tune = (_block_docs(s) for s in (splits.train, splits.val, splits.tune))
    assert len(tune) == 30 and len(val) == 20 and len(train) == 150  # fractions of the whole corpus
    assert not set(tune) & set(train) and not set(tune) & set(val) and not set(train) & set(val)
    assert set(train) | set(val) | set(tune) == set(texts)
    # the same validation documents, in the same order, with or without a tuning split
    assert val == _block_docs(plain.val)
    assert set(train) | set(tune) == set(_block_docs(plain.train))


def test_a_tuning_split_of_a_streamed_dataset_is_a_clear_error(tmp_path, cache_dir):
    texts = [f"{i:03d}" + "x" * 12 for i in range(30)]
    docs = load_documents(str(write_jsonl(tmp_path / "s.jsonl", texts)), cache_dir=cache_dir, streaming=True)
    with pytest.raises(ValueError, match="tune_fraction needs a dataset that is not streamed"):
        build_splits(docs, byte_tokenizer(), seq_len=16, val_fraction=0.1, stream_val_docs=10,
                     tune_fraction=0.1)


def test_batches_are_deterministic_permutations_shared_out_between_ranks():
    from datasets import Dataset

    blocks = Dataset.from_dict({"input_ids": [[i] * 4 for i in range(40)]}).with_format("torch")
    single = BlockBatches(blocks, batch_size=4, seed=3)
    assert len(single) == 10
    epoch0 = torch.cat([single[i][:, 0] for i in range(10)])
    assert sorted(epoch0.tolist()) == list(range(40))  # each block once per epoch
    epoch1 = torch.cat([single[i][:, 0] for i in range(10, 20)])
    assert sorted(epoch1.tolist()) == list(range(40)) and not torch.equal(epoch0, epoch1)
    assert torch.equal(BlockBatches(blocks, 4, seed=3)[13], single[13])  # a pure function of the index
    ranks = [BlockBatches(blocks, 2, seed=3, rank=r, num_processes=2) for r in range(2)]
    for i in (0, 7, 12):
        assert torch.equal(torch.cat([ranks[0][i], ranks[1][i]]), single[i])


def test_too_few_blocks_for_one_batch_is_a_clear_error():
    from datasets import Dataset

    blocks = Dataset.from_dict({"input_ids": [[1, 2]] * 3}).with_format("torch")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BlockBatches(blocks, batch_size=2, seed=0, num_processes=2)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt"])
def test_local_files_load(tmp_path, cache_dir, fmt):
    texts = [f"line one of {i}\nline two" for i in range(5)]
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", texts)
    elif fmt == "parquet":
        from datasets import Dataset

        path = tmp_path / "d.parquet"
        Dataset.from_dict({"text": texts}).to_parquet(str(path))
    else:
        path = tmp_path / "d.txt"
        path.write_text("\n\n".join(texts))  # paragraphs are documents
    docs = load_documents(str(path), cache_dir=cache_dir)
    assert [t.strip() for t in docs["text"]] == texts


def test_a_folder_of_files_loads(tmp_path, cache_dir):
    write_jsonl(tmp_path / "a.jsonl", ["alpha"])
    write_jsonl(tmp_path / "b.jsonl", ["beta", "gamma"])
    assert sorted(load_documents(str(tmp_path), cache_dir=cache_dir)["text"]) == ["alpha", "beta", "gamma"]


def test_bad_sources_are_clear_errors(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_documents(str(tmp_path / "missing.jsonl"), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="empty"):
        load_documents(str(write_jsonl(tmp_path / "empty.jsonl", ["", ""])), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="no column 'content'"):
        load_documents(str(write_jsonl(tmp_path / "d.jsonl", ["x"])), "content", cache_dir=cache_dir)
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", ["x"])
    (tmp_path / "mixed" / "b.txt").write_text("y")
    with pytest.raises(ValueError, match="one of"):
        load_documents(str(tmp_path / "mixed"), cache_dir=cache_dir)


def test_bpe_is_trained_on_the_corpus_and_round_trips(tmp_path):
    from datasets import Dataset

    texts = ["def function(argument):\n    return argument + 1\n"] * 50 + ["class Thing:\n    pass\n"] * 50
    docs = Dataset.from_dict({"text": texts})
    tok = make_tokenizer("bpe", docs, vocab_size=300)
    assert 257 < len(tok) <= 300
    ids = tok(texts[0])["input_ids"]
    assert tok.decode(ids) == texts[0] and len(ids) < len(texts[0].encode()) / 2
    tok.save_pretrained(str(tmp_path / "bpe"))
    again = make_tokenizer("bpe", docs, vocab_size=300, saved=tmp_path / "bpe")
    assert again(texts[1])["input_ids"] == tok(texts[1])["input_ids"]


def test_local_tokenizer_directory(tmp_path):
    train_bpe(["hello world"] * 10, 270).save_pretrained(str(tmp_path / "tok"))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path / "nope")


def test_streamed_batches_follow_the_same_contract(tmp_path, cache_dir):
    texts = [f"{i:03d}" + "x" * 12 for i in range(60)]  # 15 bytes + EOS: one document per 16-token block
    docs = load_documents(str(write_jsonl(tmp_path / "s.jsonl", texts)), cache_dir=cache_dir, streaming=True)
    splits = build_splits(docs, byte_tokenizer(), seq_len=16, val_fraction=0.1, stream_val_docs=10)
    doc = lambda block: bytes(block[:3].tolist()).decode()  # noqa: E731
    val = StreamBatches(splits.val, batch_size=5, seed=0, shuffle=False, name="validation")
    assert len(val) == 2 and [doc(b) for b in val[1]] == [f"{i:03d}" for i in range(5, 10)]
    single = StreamBatches(splits.train, batch_size=4, seed=0)
    ranks = [StreamBatches(splits.train, batch_size=2, seed=0, rank=r, num_processes=2) for r in range(2)]
    in_order = [single[i] for i in range(12)]
    seen = [doc(b) for batch in in_order for b in batch]
    assert len(set(seen)) == 48 and set(seen) <= {f"{i:03d}" for i in range(10, 60)}  # each at most once
    assert seen != sorted(seen)  # shuffled
    for i in (7, 2, 11):  # out of order: the stream is re-read up to the position
        assert torch.equal(single[i], in_order[i])
        assert torch.equal(torch.cat([ranks[0][i], ranks[1][i]]), in_order[i])
    with pytest.raises(ValueError, match="ran out at micro-batch 12"):
        single[12]


@pytest.mark.parametrize("line, why", [
    (b"caf\xe9 au lait", "not valid UTF-8"),
    (b'{"text": "cut', "not valid JSON"),
    (b'["a", "list"]', "a JSON list, not an object"),
    (b'{"text": 12}', "field 'text' is a int, not a string"),
])
def test_a_malformed_record_is_an_error_naming_the_file_and_the_line(tmp_path, line, why):
    path = write_jsonl(tmp_path / "d.jsonl", ["one", "two", "three"])
    path.write_bytes(path.read_bytes() + line + b"\n" + json.dumps({"text": "four"}).encode() + b"\n")
    with pytest.raises(BadRecordError, match=f"{path}, line 4: the record is {why}"):
        screen_records(str(path))
    fine = str(write_jsonl(tmp_path / "ok.jsonl", ["fine"]))
    assert screen_records(fine) == (fine, 0)


def test_skipped_records_leave_the_good_ones_in_order(tmp_path, cache_dir):
    (tmp_path / "data").mkdir()
    first = tmp_path / "data" / "a.txt"
    first.write_bytes(b"alpha\n\nbe\xfft\n\ngamma\n")
    (tmp_path / "data" / "b.txt").write_text("delta\n")
    with pytest.raises(BadRecordError, match=f"{first}, line 3"):
        screen_records(str(tmp_path / "data"))
    source, skipped = screen_records(str(tmp_path / "data"), skip=True, cache_dir=cache_dir)
    assert skipped == 1 and source != str(tmp_path / "data")
    assert screen_records(str(tmp_path / "data"), skip=True, cache_dir=cache_dir) == (source, 1)  # reused
    texts = load_documents(source, cache_dir=cache_dir)["text"]
    assert [t.strip() for t in texts] == ["alpha", "gamma", "delta"]
