"""Tokenizers for pretraining: byte-level (default, nothing to download), a BPE trained on the corpus, or a
local Hugging Face tokenizer directory. All three are ``PreTrainedTokenizerFast`` objects, so the final
model directory gets a tokenizer that ``AutoTokenizer.from_pretrained`` loads back.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def _byte_chars() -> list[str]:
    """The printable stand-in character of each byte, in the ByteLevel pre-tokenizer's convention."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Token id = byte value (0..255), plus ``<|endoftext|>`` = 256 between documents: 257 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_chars())} | {EOS: 256}
    # BPE with no merges over the byte alphabet is exactly byte-level tokenization.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A local tokenizer directory (``tokenizer.json`` etc.), never downloaded."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {str(path)!r} is neither 'byte', 'bpe' nor an existing local tokenizer directory"
        )
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer in {path} has no eos token; the packer needs one to separate documents")
    return tok
