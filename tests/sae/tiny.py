"""Tiny models, corpora and tokenizers shared by the SAE store / evaluation / feature tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lmscope.model import build_model
from lmscope.model.base import BaseTransformer
from lmscope.tokenizers import CharTokenizer
from tests.conftest import small

#: A 3-block GPT-2-style model (width 32, vocab 61) and a Llama-style one, random weights.
HOOK = "blocks.0.hook_resid_post"


def tiny_model(preset: str = "gpt2-small", n_layers: int = 3, seed: int = 0) -> BaseTransformer:
    """A small random model in eval mode (biases perturbed so no activation is trivial)."""
    model = build_model(small(preset, n_layers=n_layers), seed=seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(
                torch.randn(p.shape, dtype=p.dtype) * 0.05
            )  # drawn in shape order, not memory order
    return model


def token_stream(n_tokens: int, vocab: int = 61, seed: int = 0) -> torch.Tensor:
    """A reproducible 1-D stream of token ids."""
    return torch.randint(0, vocab, (n_tokens,), generator=torch.Generator().manual_seed(seed))


def char_corpus(path: Path, n_lines: int) -> tuple[Path, CharTokenizer]:
    """A text file of `n_lines` short lines and a char tokenizer (with an eos) over it."""
    words = ["thee", "thou", "ROMEO", "JULIET", "love", "night", "sword", "king"]
    lines = [f"{words[i % 8]} {words[(i * 3) % 8]} {i % 10}." for i in range(n_lines)]
    path.write_text("\n".join(lines) + "\n")
    chars = sorted(set(path.read_text()))
    return path, CharTokenizer(chars, special_tokens=["<eos>"])
