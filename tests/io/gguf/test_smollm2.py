"""SmolLM2-135M-Instruct from its GGUF: transformers' logits and greedy tokens, and sense.

The fast tests compare with what transformers computed from the same file (stored by
tests/io/gguf/reference.py, because transformers takes ~40 s to load it); the slow one
recomputes everything live.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmscope.generate import generate
from lmscope.io.gguf import GGUFFile, load_gguf_tokenizer
from lmscope.model.base import BaseTransformer
from lmscope.real_models import CHECK_CONTINUATION, LoadedModel, check_generation
from tests.io.gguf.reference import N_POSITIONS, NEW_TOKENS, SHARED_TEXT, compute

#: What the issue asks: logits equal to transformers' to 1e-4.
ATOL = 1e-4


@pytest.fixture(scope="module")
def loaded(smollm2: BaseTransformer, smollm2_file: GGUFFile) -> LoadedModel:
    return LoadedModel(smollm2, load_gguf_tokenizer(smollm2_file), smollm2_file.path, "gguf", 0.0)


def passage_logits(model: BaseTransformer, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids[:N_POSITIONS]]))[0]


def test_logits_match_transformers(smollm2: BaseTransformer, reference: dict[str, Any]) -> None:
    logits = passage_logits(smollm2, reference["passage_ids"])
    stored = reference["logits"]
    top_values = torch.tensor(stored["top_values"])
    got_top = logits.gather(1, torch.tensor(stored["top_ids"]))
    torch.testing.assert_close(got_top, top_values, atol=ATOL, rtol=0)
    fixed = logits[:, torch.tensor(reference["fixed_ids"])]
    torch.testing.assert_close(fixed, torch.tensor(stored["fixed_values"]), atol=ATOL, rtol=0)
    # The most likely next token is transformers' at every position.
    assert torch.equal(logits.topk(1).indices[:, 0], torch.tensor(stored["top_ids"])[:, 0])


@pytest.mark.parametrize("kind", ["chat", "continuation"])
def test_greedy_tokens_match_transformers(
    loaded: LoadedModel, reference: dict[str, Any], kind: str
) -> None:
    ref = reference["greedy"][kind]
    result = generate(loaded.model, [ref["prompt_ids"]], max_new_tokens=NEW_TOKENS, eos_token_id=2)
    assert result.new_tokens[0] == ref["new_ids"]


def test_chat_answer_names_paris(loaded: LoadedModel) -> None:
    check = check_generation(loaded)
    assert check["chat"] and "<|im_start|>assistant\n" in check["prompt"]
    assert "Paris" in check["answer"]


def test_continuation_is_paris(loaded: LoadedModel) -> None:
    tokenizer = loaded.tokenizer
    assert tokenizer is not None
    result = generate(loaded.model, CHECK_CONTINUATION, tokenizer=tokenizer, max_new_tokens=3)
    assert result.texts is not None and result.texts[0].startswith(" Paris")


@pytest.mark.slow
def test_live_transformers_parity(
    smollm2: BaseTransformer, smollm2_file: GGUFFile, reference: dict[str, Any]
) -> None:
    """Recompute transformers' outputs (and check the stored file against them): all
    logits of 256 positions, greedy tokens, the tokenizer on 200k characters."""
    text = SHARED_TEXT.read_text(encoding="utf-8")[:4000]
    live = compute(smollm2_file.path, text)
    assert live["passage_ids"] == reference["passage_ids"]
    assert live["tricky"] == reference["tricky"] and live["greedy"] == reference["greedy"]
    torch.testing.assert_close(
        torch.tensor(live["logits"]["top_values"]),
        torch.tensor(reference["logits"]["top_values"]),
        atol=1e-5,
        rtol=0,
    )
    tokenizer = load_gguf_tokenizer(smollm2_file)
    assert tokenizer.encode(text) == live["passage_ids"]
    from tests.io.gguf.reference import load_transformers

    hf, hf_tokenizer = load_transformers(smollm2_file.path)
    whole = SHARED_TEXT.read_text(encoding="utf-8")[:200_000]
    assert tokenizer.encode(whole) == hf_tokenizer(whole, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([live["passage_ids"][:256]])
    with torch.inference_mode():
        torch.testing.assert_close(smollm2(ids), hf(ids).logits, atol=ATOL, rtol=0)
    for kind, ref in live["greedy"].items():
        result = generate(smollm2, [ref["prompt_ids"]], max_new_tokens=NEW_TOKENS, eos_token_id=2)
        assert result.new_tokens[0] == ref["new_ids"], kind
