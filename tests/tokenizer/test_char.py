"""CharTokenizer: nanoGPT's ids, round trips, unknown characters, special tokens, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.tokenizers import CharTokenizer, TokenizerError, load_tokenizer
from tests.conftest import SHARED

TINY = SHARED / "data" / "tinyshakespeare.txt"


def test_ids_are_sorted_characters() -> None:
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == ["e", "h", "l", "o"]
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert tok.vocab_size == 4
    assert tok.special_tokens() == {}
    assert tok.bos_id is None and tok.eos_id is None and tok.pad_id is None


@pytest.mark.skipif(not TINY.is_file(), reason="needs shared/data/tinyshakespeare.txt")
def test_tiny_shakespeare_matches_nanogpt() -> None:
    text = TINY.read_text(encoding="utf-8")
    tok = CharTokenizer.from_files([TINY])
    # nanoGPT's data/shakespeare_char/prepare.py, verbatim.
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    assert len(text) == 1_115_394
    assert tok.vocab_size == len(chars) == 65
    assert tok.chars == chars
    expected = np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text))
    np.testing.assert_array_equal(tok.encode_array(text), expected)
    assert tok.decode(expected[:2000]) == text[:2000]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_round_trip_random_unicode(text: str) -> None:
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1), st.text(min_size=1))
def test_encode_agrees_with_a_dictionary(vocab_text: str, text: str) -> None:
    tok = CharTokenizer.from_text(vocab_text + text)
    stoi = {c: i for i, c in enumerate(sorted(set(vocab_text + text)))}
    assert tok.encode(text) == [stoi[c] for c in text]


def test_unknown_character_names_it_and_its_position() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match=r"'é' \(U\+00E9\) at position 3 .*unk_token"):
        tok.encode("abcéa")


def test_unknown_characters_map_to_unk_token() -> None:
    tok = CharTokenizer.from_text("abc", unk_token="<unk>")
    assert tok.vocab_size == 4
    assert tok.special_tokens() == {"<unk>": 3}
    assert tok.encode("aéb€") == [0, 3, 1, 3]
    assert tok.decode([0, 3]) == "a<unk>"
    assert tok.roles["unk"] == "<unk>"


def test_special_tokens_follow_characters_and_take_roles() -> None:
    tok = CharTokenizer.from_text("ba", special_tokens=["<|endoftext|>", "<pad>"])
    assert tok.special_tokens() == {"<|endoftext|>": 2, "<pad>": 3}
    assert tok.eos_id == 2 and tok.bos_id == 2 and tok.pad_id == 3
    # Special tokens are produced by id only, never parsed out of text.
    with pytest.raises(TokenizerError, match="'<'"):
        tok.encode("a<pad>")
    assert tok.decode([0, 2, 1]) == "a<|endoftext|>b"


def test_decode_rejects_ids_out_of_range() -> None:
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(TokenizerError, match=r"token id 2 is out of range .* 2 ids"):
        tok.decode([0, 2])


def test_bad_vocabularies_are_refused() -> None:
    with pytest.raises(TokenizerError, match="at least one character"):
        CharTokenizer.from_text("")
    with pytest.raises(TokenizerError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(TokenizerError, match="not plain characters"):
        CharTokenizer.from_text("a<", special_tokens=["<"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(
        "Hello, world\n", special_tokens=["<|endoftext|>"], unk_token="?!"
    )
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer)
    assert again.chars == tok.chars
    assert again.special_tokens() == tok.special_tokens()
    assert again.roles == tok.roles
    assert again.encode("Hello\nwörld") == tok.encode("Hello\nwörld")
    assert again.describe() == tok.describe()


def test_from_files_reads_like_data_prepare(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfab\r\nc")  # BOM and CRLF
    tok = CharTokenizer.from_files([tmp_path / "a.txt"])
    assert tok.chars == ["\n", "a", "b", "c"]  # no BOM character, no carriage return
