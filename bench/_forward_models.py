"""The two models of bench/forward.py (Hugging Face's GPT-2 and lmscope's gpt2-small, same
shape), how each is called, and the row-padded unembedding check."""

from __future__ import annotations

import statistics
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _forward_timing import interleaved
from lmscope import ModelConfig, build_model
from lmscope.model import BaseTransformer
from lmscope.model.embedding import linear_padded_rows

#: ``--quick``: a shrunk GPT-2 (both libraries) so that a smoke test runs in seconds.
QUICK_SHAPE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 517, "max_seq_len": 64}


def gpt2_config(cfg: ModelConfig, **extra: Any) -> Any:
    """A Hugging Face ``GPT2Config`` of `cfg`'s shape (SDPA attention), plus `extra`.

    No special tokens: 50256 is outside a --quick vocabulary, and generation must never
    stop early on an end-of-text id (bench/generate.py builds its pair here)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=None,
        **extra,
    )


def build_pair(quick: bool, seed: int = 0) -> tuple[nn.Module, BaseTransformer]:
    """Hugging Face GPT2LMHeadModel (SDPA) and lmscope gpt2-small, same shape, eval mode."""
    from transformers import GPT2LMHeadModel

    cfg = ModelConfig.from_preset("gpt2-small")
    if quick:
        cfg = cfg.replace(**QUICK_SHAPE)
    hf_cfg = gpt2_config(cfg)
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    ours = build_model(cfg, seed=seed).eval()
    return hf, ours


def n_params(model: nn.Module) -> int:
    """Parameters, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() dedups by identity


def hf_forward(model: nn.Module, tokens: Tensor) -> Tensor:
    """Logits of the HF model. No KV cache: a plain forward, like ours."""
    return model(input_ids=tokens, use_cache=False).logits


def explicit_hooks(model: BaseTransformer) -> AbstractContextManager[object]:
    """Context in which every layer takes the explicit (pattern-materialising) path."""
    return model.hooks(fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, h: None)])


def unembed_padding_check(d_model: int, vocab: int, n_rows: int, repeats: int) -> dict[str, float]:
    """The vocabulary projection into a contiguous vs a row-padded output (same values).

    Checks the claim behind `linear_padded_rows`: BLAS is slower when output rows are
    an odd number of floats apart (GPT-2's 50257).
    """
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n_rows, d_model, generator=gen)
    w = torch.randn(vocab, d_model, generator=gen) * 0.02
    same = torch.equal(F.linear(x, w), linear_padded_rows(x, w, None))
    times = interleaved(
        {"contiguous": lambda: F.linear(x, w), "padded": lambda: linear_padded_rows(x, w, None)},
        repeats,
    )
    contiguous, padded = (statistics.median(times[k]) for k in ("contiguous", "padded"))
    return {
        "contiguous_s": contiguous,
        "padded_s": padded,
        "speedup": contiguous / padded,
        "identical": float(same),
        "rows": n_rows,
    }
