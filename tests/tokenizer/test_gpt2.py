"""GPT-2's tokenizer built offline from openai-whisper's ranks file: known ids, and parity
with an independent tiktoken-style encoder (regex split + lowest-rank-first merging)."""

from __future__ import annotations

import importlib.util
import itertools
from functools import cache

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.tokenizers import HFTokenizer, TokenizerError, gpt2_tokenizer, load_tokenizer
from lmscope.tokenizers.gpt2 import gpt2_ranks_file, read_tiktoken, vocab_and_merges

needs_whisper = pytest.mark.skipif(
    importlib.util.find_spec("whisper") is None,
    reason="needs `pip install --no-deps openai-whisper` (GPT-2's ranks file)",
)

# GPT-2's pre-tokenizer pattern (openai/gpt-2 encoder.py, tiktoken's "gpt2" encoding).
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@cache
def _ranks() -> dict[bytes, int]:
    return read_tiktoken(gpt2_ranks_file())


def reference_encode(text: str) -> list[int]:
    """tiktoken's algorithm, written out: split with the regex, then in each piece merge
    the adjacent pair of lowest rank until none is in the table."""
    ranks = _ranks()
    ids = []
    for piece in GPT2_PATTERN.findall(text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            rank, i = min(((r, i) for r, i in pairs if r is not None), default=(None, -1))
            if rank is None:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids.extend(ranks[p] for p in parts)
    return ids


@pytest.fixture(scope="module")
def gpt2() -> HFTokenizer:
    if importlib.util.find_spec("whisper") is None:
        pytest.skip("needs `pip install --no-deps openai-whisper` (GPT-2's ranks file)")
    return gpt2_tokenizer()


@needs_whisper
@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [15496, 995]),
        ("Hello, world!", [15496, 11, 995, 0]),
        (" the", [262]),
        ("\n\n", [628]),
        ("<|endoftext|>", [50256]),
        ("The quick brown fox", [464, 2068, 7586, 21831]),
    ],
)
def test_known_gpt2_ids(gpt2: HFTokenizer, text: str, ids: list[int]) -> None:
    assert gpt2.encode(text) == ids
    assert gpt2.decode(ids) == text


@needs_whisper
def test_vocabulary_and_roles(gpt2: HFTokenizer) -> None:
    assert gpt2.kind == "gpt2"
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens() == {"<|endoftext|>": 50256}
    assert gpt2.eos_id == 50256 and gpt2.bos_id == 50256 and gpt2.pad_id is None
    assert gpt2.id_to_token(15496) == "Hello" and gpt2.id_to_token(995) == "Ġworld"


@needs_whisper
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"])))
def test_parity_with_tiktoken_algorithm(gpt2: HFTokenizer, text: str) -> None:
    assert gpt2.encode(text) == reference_encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text


@needs_whisper
@settings(max_examples=100, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(gpt2: HFTokenizer, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text)) == text


@needs_whisper
def test_saved_gpt2_reloads(gpt2: HFTokenizer, tmp_path: object) -> None:
    gpt2.save(tmp_path)  # type: ignore[arg-type]
    again = load_tokenizer(tmp_path)  # type: ignore[arg-type]
    assert again.kind == "gpt2" and again.eos_id == 50256
    assert again.encode("Hello world") == [15496, 995]


def test_merges_are_recovered_from_ranks() -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    vocab, merges = vocab_and_merges(ranks)
    assert vocab == {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}
    # "abc" is "ab" + "c": BPE below rank 5 merges a+b (rank 3) before b+c (rank 4).
    assert merges == [("a", "b"), ("b", "c"), ("ab", "c")]
    # A space byte is stored as GPT-2's printable stand-in.
    vocab, _ = vocab_and_merges({b" ": 0})
    assert vocab == {"Ġ": 0}


def test_missing_whisper_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerError, match="pip install --no-deps openai-whisper"):
        gpt2_ranks_file()
