"""The tokenizer rebuilt from GGUF metadata gives transformers' ids (SmolLM2, stored
reference), and small trained vocabularies give them live for each pre-tokenizer family."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lmscope.errors import CheckpointError
from lmscope.generate.chat import chat_format
from lmscope.io.gguf import GGUFFile, load_gguf_tokenizer, save_gguf_tokenizer
from lmscope.io.gguf.tokenizer import PRE_TOKENIZERS
from lmscope.tokenizers import load_tokenizer
from tests.io.gguf.reference import QUESTION, TRICKY
from tests.io.gguf.synthetic import tiny_llama_gguf, trained_tokenizer_metadata

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_file: GGUFFile) -> Any:
    return load_gguf_tokenizer(smollm2_file)


def test_shakespeare_ids_match_transformers(smollm2_tokenizer: Any, reference: dict) -> None:
    ids = smollm2_tokenizer.encode(reference["passage"])
    assert len(ids) > 1000
    assert ids == reference["passage_ids"]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_match_transformers_and_round_trip(
    smollm2_tokenizer: Any, reference: dict, text: str
) -> None:
    ids = smollm2_tokenizer.encode(text)
    assert ids == reference["tricky"][text]
    assert smollm2_tokenizer.decode(ids) == text


def test_special_tokens_and_roles(smollm2_tokenizer: Any) -> None:
    special = smollm2_tokenizer.special_tokens()
    assert len(special) == 17 and special["<|im_start|>"] == 1 and special["<|im_end|>"] == 2
    assert (smollm2_tokenizer.bos_id, smollm2_tokenizer.eos_id) == (1, 2)
    assert smollm2_tokenizer.pad_id == 2 and smollm2_tokenizer.vocab_size == 49152
    # Control tokens written in text stay whole.
    assert smollm2_tokenizer.encode("<|im_start|>assistant") == [1, 520, 9531]


def test_chat_template_renders_as_transformers(smollm2_tokenizer: Any, reference: dict) -> None:
    assert "<|im_start|>" in smollm2_tokenizer.chat_template
    prompt = chat_format(tokenizer=smollm2_tokenizer).render(
        [{"role": "user", "content": QUESTION}]
    )
    assert smollm2_tokenizer.encode(prompt) == reference["greedy"]["chat"]["prompt_ids"]


def test_saved_tokenizer_loads_in_lmscope_and_transformers(
    smollm2_file: GGUFFile, smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    save_gguf_tokenizer(smollm2_file, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == smollm2_tokenizer.chat_template
    assert (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    text = "Thou art 3 times the fool, Ünïcödé 🤗"
    again = load_tokenizer(tmp_path)
    assert again.encode(text) == smollm2_tokenizer.encode(text)
    assert again.eos_id == 2
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf(text, add_special_tokens=False)["input_ids"] == smollm2_tokenizer.encode(text)
    assert hf.chat_template == smollm2_tokenizer.chat_template


# --- small trained vocabularies, one per pre-tokenizer family ---------------------------
PROBES = [*TRICKY, "Before 2024, we'd 1234567 proceeds!\n\n\tAnd  THEN 3.14", "  x\r\n\r\ny"]


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_pre_tokenizer_families_match_transformers(tmp_path: Path, pre: str) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = tmp_path / "tok.gguf"
    tiny_llama_gguf(path, tokenizer=trained_tokenizer_metadata(pre))
    ours = load_gguf_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(os.fspath(tmp_path), gguf_file=path.name)
    for text in PROBES:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text


def test_smollm_pre_tokenizer_splits_digits(tmp_path: Path) -> None:
    """llama.cpp's 'smollm' split isolates each digit (transformers does not: it uses GPT-2's
    regex for this name, which only differs when the vocabulary has multi-digit tokens)."""
    path = tmp_path / "tok.gguf"
    meta = trained_tokenizer_metadata("smollm")
    assert any(t.isdigit() and len(t) > 1 for t in meta["tokenizer.ggml.tokens"])
    tiny_llama_gguf(path, tokenizer=meta)
    tok = load_gguf_tokenizer(path)
    pieces = [tok.id_to_token(i) for i in tok.encode("year 2024 and 12345")]
    assert "2" in pieces and not any(p.isdigit() and len(p) > 1 for p in pieces)
    assert tok.decode(tok.encode("year 2024 and 12345")) == "year 2024 and 12345"


@pytest.mark.parametrize(
    ("model", "pre", "message"),
    [
        ("llama", "default", "has a 'llama' tokenizer"),
        ("gpt2", "no-such-pre", "pre-tokenizer 'no-such-pre'"),
    ],
)
def test_unsupported_tokenizers_are_named(
    tmp_path: Path, model: str, pre: str, message: str
) -> None:
    tiny_llama_gguf(tmp_path / "t.gguf", tokenizer=trained_tokenizer_metadata(pre, model))
    with pytest.raises(CheckpointError, match=message):
        load_gguf_tokenizer(tmp_path / "t.gguf")


def test_known_pre_tokenizers_include_the_common_ones() -> None:
    assert {"gpt-2", "smollm", "llama-bpe", "qwen2"} <= set(PRE_TOKENIZERS)
