"""prepare + TokenData: memmap shards equal the tokenized text, split rule, meta, errors."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from lmscope.data import (
    DataError,
    ShardedTokens,
    TokenData,
    dtype_for_vocab,
    prepare,
    resolve_sources,
)
from lmscope.tokenizers import CharTokenizer, HFTokenizer, TokenIds, Tokenizer, train_bpe
from tests.conftest import SHARED

TINY = SHARED / "data" / "tinyshakespeare.txt"
TEXT = "".join(f"Speaker {i}:\nWords, words, words number {i}.\n\n" for i in range(400))


class WideTokenizer(CharTokenizer):
    """A char tokenizer that claims a bigger vocabulary (to test dtype choice)."""

    def __init__(self, chars: Sequence[str], claimed: int) -> None:
        super().__init__(chars)
        self.claimed = claimed

    @property
    def vocab_size(self) -> int:
        return self.claimed


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_single_file_splits_like_nanogpt(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    tok = CharTokenizer.from_text(TEXT)
    result = prepare(resolve_sources(path), tmp_path / "out", tok)
    data = TokenData(tmp_path / "out")
    ids = np.asarray(tok.encode(TEXT))
    n = int(len(ids) * 0.9)  # nanoGPT: train_data = data[:int(n*0.9)]
    assert isinstance(data.split("train"), np.memmap)  # mapped, not loaded
    np.testing.assert_array_equal(data.split("train"), ids[:n])
    np.testing.assert_array_equal(data.split("val"), ids[n:])
    assert data.n_tokens("train") == n and data.n_tokens("val") == len(ids) - n
    assert result.n_tokens("train") == n
    assert data.meta["dtype"] == "uint16" and data.split("train").dtype == np.dtype("<u2")
    assert data.tokenizer.encode("Speaker") == tok.encode("Speaker")
    source = data.meta["sources"][0]
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["chars"] == len(TEXT) and source["bytes"] == path.stat().st_size
    assert data.meta["tokenizer"]["kind"] == "char" and data.meta["vocab_size"] == tok.vocab_size


@pytest.mark.skipif(not TINY.is_file(), reason="needs shared/data/tinyshakespeare.txt")
def test_tiny_shakespeare_matches_nanogpt_prepare(tmp_path: Path) -> None:
    text = TINY.read_text(encoding="utf-8")
    # nanoGPT's data/shakespeare_char/prepare.py
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    train_ids = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in text[int(n * 0.9) :]], dtype=np.uint16)
    sources = resolve_sources(TINY)
    prepare(sources, tmp_path / "out", CharTokenizer.from_files(sources))
    data = TokenData(tmp_path / "out")
    assert (data.n_tokens("train"), data.n_tokens("val")) == (1_003_854, 111_540)
    np.testing.assert_array_equal(data.split("train"), train_ids)
    np.testing.assert_array_equal(data.split("val"), val_ids)
    # Same bytes as nanoGPT's train.bin (uint16, native little-endian).
    shard = tmp_path / "out" / data.meta["splits"]["train"]["shards"][0]["file"]
    assert shard.read_bytes() == train_ids.astype("<u2").tobytes()


def test_many_sources_split_each_and_join_with_a_separator(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "abcdefghij" * 3)  # 30 tokens: 27 train, 3 val
    b = _write(tmp_path / "b.txt", "0123456789")  # 10 tokens: 9 train, 1 val
    tok = CharTokenizer.from_text("abcdefghij0123456789\n")
    prepare(resolve_sources([a, b]), tmp_path / "out", tok)
    data = TokenData(tmp_path / "out")
    sep = tok.encode("\n\n")  # no eos token: documents are joined with a blank line
    assert data.meta["separator"] == sep
    text_a, text_b = a.read_text(), b.read_text()
    expected_train = tok.encode(text_a[:27]) + sep + tok.encode(text_b[:9])
    expected_val = tok.encode(text_a[27:]) + sep + tok.encode(text_b[9:])
    np.testing.assert_array_equal(data.split("train"), expected_train)
    np.testing.assert_array_equal(data.split("val"), expected_val)
    assert [s["train_tokens"] for s in data.meta["sources"]] == [27, 9]


def test_bpe_shards_equal_encoding_the_whole_file(tmp_path: Path) -> None:
    """Small read chunks must not change a byte-level BPE's tokens (cuts at safe points)."""
    path = _write(tmp_path / "a.txt", TEXT + "  trailing   spaces \n\n\n" + TEXT)
    bpe = train_bpe([TEXT], vocab_size=300)
    prepare(resolve_sources(path), tmp_path / "out", bpe, val_fraction=0.0, chunk_bytes=97)
    data = TokenData(tmp_path / "out")
    np.testing.assert_array_equal(data.split("train"), bpe.encode(path.read_text()))
    assert data.n_tokens("val") == 0 and len(data.split("val")) == 0


def test_jsonl_records_are_documents_joined_by_eos(tmp_path: Path) -> None:
    records = [{"text": "to be"}, {"text": "or not"}, {"text": "to be"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    bpe: HFTokenizer = train_bpe(["to be or not to be"], vocab_size=270)
    prepare(resolve_sources(path, field="text"), tmp_path / "out", bpe, val_fraction=0.0)
    eos = bpe.eos_id
    assert eos is not None
    expected = [*bpe.encode("to be"), eos, *bpe.encode("or not"), eos, *bpe.encode("to be")]
    np.testing.assert_array_equal(TokenData(tmp_path / "out").split("train"), expected)
    assert TokenData(tmp_path / "out").meta["sources"][0]["documents"] == 3


def test_several_shards_read_as_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    tok = CharTokenizer.from_text(TEXT)
    prepare(resolve_sources(path), tmp_path / "out", tok, shard_tokens=1000)
    data = TokenData(tmp_path / "out")
    train = data.split("train")
    assert isinstance(train, ShardedTokens)
    assert len(data.meta["splits"]["train"]["shards"]) == -(-data.n_tokens("train") // 1000)
    ids = np.asarray(tok.encode(TEXT))[: data.n_tokens("train")]
    assert len(train) == len(ids)
    np.testing.assert_array_equal(np.asarray(train), ids)
    for lo, hi in [(0, 1), (990, 1010), (999, 3001), (len(ids) - 5, len(ids) + 9)]:
        np.testing.assert_array_equal(train[lo:hi], ids[lo:hi])
    assert train[1000] == ids[1000] and train[-1] == ids[-1]


def test_dtype_follows_the_vocabulary() -> None:
    assert dtype_for_vocab(65) == np.uint16
    assert dtype_for_vocab(65_536) == np.uint16  # ids 0..65535 fit
    assert dtype_for_vocab(65_537) == np.uint32
    assert dtype_for_vocab(1 << 32) == np.uint32
    with pytest.raises(DataError, match="does not fit the largest token dtype, uint32"):
        dtype_for_vocab((1 << 32) + 1)


def test_large_vocabulary_gets_uint32_shards(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "abc")
    prepare(resolve_sources(path), tmp_path / "out", WideTokenizer("abc", 70_000))
    data = TokenData(tmp_path / "out")
    assert data.meta["dtype"] == "uint32" and data.split("train").dtype == np.dtype("<u4")


def test_vocab_overflowing_uint32_is_refused_before_any_work(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "abc")
    with pytest.raises(DataError, match=r"4,294,967,297 does not fit .* smaller vocabulary"):
        prepare(resolve_sources(path), tmp_path / "out", WideTokenizer("abc", (1 << 32) + 1))
    assert not (tmp_path / "out").exists()


class FailingTokenizer(CharTokenizer):
    """Fails on the second text it encodes (an interrupted run)."""

    calls = 0

    def encode_array(self, text: str) -> np.ndarray:
        FailingTokenizer.calls += 1
        if FailingTokenizer.calls == 2:
            raise KeyboardInterrupt
        return super().encode_array(text)


def test_an_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a.txt", "abc"), _write(tmp_path / "b.txt", "cab")
    with pytest.raises(KeyboardInterrupt):
        prepare(resolve_sources([a, b]), tmp_path / "out", FailingTokenizer("abc"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temp left


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    tok = CharTokenizer.from_text(TEXT)
    prepare(resolve_sources(path), tmp_path / "out", tok)
    with pytest.raises(DataError, match=r"already holds prepared data .* --overwrite"):
        prepare(resolve_sources(path), tmp_path / "out", tok)
    prepare(resolve_sources(path), tmp_path / "out", tok, val_fraction=0.5, overwrite=True)
    assert TokenData(tmp_path / "out").meta["val_fraction"] == 0.5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        prepare(resolve_sources(path), tmp_path / "other", tok, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_bad_arguments(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "abc")
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        prepare(resolve_sources(path), tmp_path / "out", tok, val_fraction=1.0)
    whitespace_only = _write(tmp_path / "j.jsonl", '{"text": ""}\n')
    with pytest.raises(DataError, match="hold no text"):
        prepare(resolve_sources(whitespace_only, field="text"), tmp_path / "out", tok)


class LyingTokenizer(CharTokenizer):
    def encode_array(self, text: str) -> np.ndarray:
        return np.full(len(text), 7, dtype=np.int64)

    def decode(self, ids: TokenIds) -> str:
        return ""


def test_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", "abc")
    tok: Tokenizer = LyingTokenizer("abc")
    with pytest.raises(DataError, match=r"produced id 7 .* outside its vocab_size 3"):
        prepare(resolve_sources(path), tmp_path / "out", tok)


def test_token_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not prepared data: it has no meta.json"):
        TokenData(tmp_path)
    path = _write(tmp_path / "a.txt", TEXT)
    prepare(resolve_sources(path), tmp_path / "out", CharTokenizer.from_text(TEXT))
    data = TokenData(tmp_path / "out")
    with pytest.raises(DataError, match="unknown split 'test'; the splits are train, val"):
        data.split("test")
    shard = tmp_path / "out" / data.meta["splits"]["train"]["shards"][0]["file"]
    os.truncate(shard, shard.stat().st_size - 2)
    with pytest.raises(DataError, match=r"is .* bytes, expected .* damaged; prepare it again"):
        TokenData(tmp_path / "out")


def test_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """Streaming: preparing 8 MB holds a few read chunks in memory, never the corpus."""
    line = "All the world's a stage, and all the men and women merely players.\n"
    path = tmp_path / "big.txt"
    with open(path, "w") as f:
        for _ in range(8_000_000 // len(line)):
            f.write(line)
    tok = CharTokenizer.from_text(line)
    sources = resolve_sources(path)
    tracemalloc.start()
    try:
        prepare(sources, tmp_path / "out", tok, chunk_bytes=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert TokenData(tmp_path / "out").n_tokens("train") == int(path.stat().st_size * 0.9)
    # A few 64 KiB chunks' text and ids; the corpus itself would be 8 MB as text alone.
    assert peak < 4_000_000
