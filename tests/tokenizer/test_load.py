"""load_tokenizer / make_tokenizer: dispatch on the saved files, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmscope.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    TokenizerError,
    load_tokenizer,
    make_tokenizer,
)
from lmscope.tokenizers.base import infer_roles


def test_roles_are_inferred_from_usual_names() -> None:
    assert infer_roles(["<s>", "</s>", "<pad>", "<unk>"]) == {
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<pad>",
        "unk": "<unk>",
    }
    assert infer_roles(["<|endoftext|>"]) == {
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": None,
        "unk": None,
    }
    assert infer_roles([]) == dict.fromkeys(("bos", "eos", "pad", "unk"))


def test_a_role_must_be_a_special_token() -> None:
    with pytest.raises(TokenizerError, match="eos token '</s>' is not one of"):
        CharTokenizer(["a"], roles={"eos": "</s>"})


def test_empty_directory_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"expected lmscope_tokenizer.json .* tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such file or directory"):
        load_tokenizer(tmp_path / "missing")


def test_manifest_problems_are_named(tmp_path: Path) -> None:
    CharTokenizer.from_text("ab").save(tmp_path)
    manifest = tmp_path / "lmscope_tokenizer.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(TokenizerError, match="format version 99"):
        load_tokenizer(tmp_path)
    manifest.write_text(json.dumps({**data, "kind": "wordpiece"}))
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
    manifest.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(tmp_path)
    # The manifest file itself also names the directory.
    CharTokenizer.from_text("ab").save(tmp_path)
    assert load_tokenizer(manifest).encode("ba") == [1, 0]


def test_broken_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match=r"cannot read .* as a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)


def test_make_tokenizer_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("to be or not to be\n" * 50)
    char = make_tokenizer("char", [tmp_path / "a.txt"])
    assert isinstance(char, CharTokenizer) and char.vocab_size == len(set("to be or not\n"))
    bpe = make_tokenizer("bpe", [tmp_path / "a.txt"], vocab_size=262)
    assert isinstance(bpe, HFTokenizer) and bpe.kind == "bpe" and bpe.vocab_size == 262
    bpe.save(tmp_path / "tok")
    assert make_tokenizer(str(tmp_path / "tok"), []).encode("to be") == bpe.encode("to be")
    with pytest.raises(TokenizerError, match="'chars' is not one of char, bpe, gpt2"):
        make_tokenizer("chars", [])
