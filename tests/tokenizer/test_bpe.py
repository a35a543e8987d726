"""Byte-level BPE (train_bpe) and HFTokenizer: round trips, exact chunking, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.data import Source
from lmscope.data.read import split_safely
from lmscope.tokenizers import HFTokenizer, TokenizerError, load_tokenizer, train_bpe

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
    "Größe, naïve café — 東京 🎉 tabs\tand  double  spaces.\r\n"
) * 20


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe([CORPUS], vocab_size=340)


def test_vocabulary_layout(bpe: HFTokenizer) -> None:
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 340
    # Special tokens come first, then the 256 byte symbols, then merges.
    assert bpe.special_tokens() == {"<|endoftext|>": 0}
    assert bpe.eos_id == 0 and bpe.bos_id == 0 and bpe.pad_id is None
    assert len(bpe.encode("Speak, speak.")) < len("Speak, speak.")  # merges were learned


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_random_unicode(bpe: HFTokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab  \n\n\t.'sXé東🎉")), max_size=300))
def test_pieces_cut_at_safe_points_encode_like_the_whole(bpe: HFTokenizer, text: str) -> None:
    """What lets data preparation encode a big file chunk by chunk, exactly."""
    whole = bpe.encode(text)
    pieces = list(split_safely(text, 8))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in bpe.encode(p)] == whole


def test_encode_array_and_batch_match_encode(bpe: HFTokenizer) -> None:
    text = CORPUS * 30  # long enough to be encoded in parallel pieces
    np.testing.assert_array_equal(bpe.encode_array(text), np.asarray(bpe.encode(text)))
    assert bpe.encode_batch(["Speak", "All:\n"]) == [bpe.encode("Speak"), bpe.encode("All:\n")]


def test_too_small_vocabulary_is_refused() -> None:
    with pytest.raises(TokenizerError, match=r"at least 257 \(256 byte symbols \+ 1 special"):
        train_bpe([CORPUS], vocab_size=200)


def test_trains_from_files_and_jsonl_fields(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    lines = [json.dumps({"text": line}) for line in CORPUS.splitlines() if line]
    (tmp_path / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
    from_file = train_bpe([tmp_path / "a.txt"], vocab_size=300)
    from_jsonl = train_bpe([Source(tmp_path / "b.jsonl", field="text")], vocab_size=300)
    for tok in (from_file, from_jsonl):
        assert tok.decode(tok.encode("Speak, speak.")) == "Speak, speak."
        assert len(tok.encode("First Citizen")) <= 4  # a frequent phrase is a few tokens
    # No JSON syntax learned from the JSONL's field values.
    assert '":"' not in {from_jsonl.decode([i]) for i in range(from_jsonl.vocab_size)}


def test_empty_training_text_is_an_error() -> None:
    with pytest.raises(Exception, match="no text"):
        train_bpe(["", ""], vocab_size=300)


def test_save_load_round_trip(bpe: HFTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "lmscope_tokenizer.json"}
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFTokenizer) and again.kind == "bpe"
    assert again.vocab_size == bpe.vocab_size and again.roles == bpe.roles
    assert again.encode(CORPUS) == bpe.encode(CORPUS)


def test_plain_hugging_face_tokenizer_json_loads_as_is(bpe: HFTokenizer, tmp_path: Path) -> None:
    bpe.hf.save(str(tmp_path / "tokenizer.json"))  # what a Hugging Face checkpoint has
    from_dir = load_tokenizer(tmp_path)
    from_file = load_tokenizer(tmp_path / "tokenizer.json")
    for tok in (from_dir, from_file):
        assert tok.kind == "hf"
        assert tok.encode(CORPUS) == bpe.encode(CORPUS)
    # tokenizer_config.json decides the roles when present (AddedToken dicts too).
    hf = tokenizers.Tokenizer.from_str(bpe.hf.to_str())
    hf.add_special_tokens(["<s>", "</s>", "<pad>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (340, 341, None)
    assert tok.vocab_size == 343
    # A role may name a plain vocabulary entry; one the vocabulary lacks stays empty.
    config = {"bos_token": "Speak", "eos_token": "</s>", "pad_token": "<nope>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bpe.hf.token_to_id("Speak"), 341, None)
    assert tok.special_tokens()["Speak"] == tok.bos_id


def test_decode_rejects_ids_out_of_range(bpe: HFTokenizer) -> None:
    with pytest.raises(TokenizerError, match="token id 340 is out of range"):
        bpe.decode([1, 340])
    with pytest.raises(TokenizerError, match="not in this tokenizer's vocabulary"):
        bpe.id_to_token(10_000)
