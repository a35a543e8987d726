"""Small Hugging Face models of every family, built offline with random weights.

Each case is a tiny config of one family (width 32, 2 layers, vocab 61) that exercises
one feature: GQA, partial rotary, each RoPE scaling, a sliding window shorter than the
test sequences, tied and untied heads, biases, MoE, post-norm, encoder-decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

VOCAB = 61
#: Token ids 0-2 are special in some configs; tests draw tokens from here up.
FIRST_TOKEN = 3
_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_GPT = {
    "vocab_size": VOCAB,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class Case:
    """One Hugging Face model: its class, config class and config keys."""

    model: str
    config: str
    kwargs: dict[str, Any]
    #: decoder (causal LM), encoder (BERT) or encoder-decoder (T5).
    kind: str = "decoder"

    def build(self, seed: int = 0) -> nn.Module:
        """The Hugging Face model, random weights scaled up so layers matter, eval mode."""
        torch.manual_seed(seed)
        config = getattr(transformers, self.config)(**self.kwargs)
        model = getattr(transformers, self.model)(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        return model


def _llama(**extra: Any) -> Case:
    return Case("LlamaForCausalLM", "LlamaConfig", {**_DECODER, "num_key_value_heads": 2, **extra})


def _rope(kind: str, **params: Any) -> dict[str, Any]:
    return {"rope_parameters": {"rope_type": kind, "rope_theta": 10000.0, **params}}


CASES: dict[str, Case] = {
    "gpt2": Case("GPT2LMHeadModel", "GPT2Config", _GPT),
    "gpt2-untied": Case("GPT2LMHeadModel", "GPT2Config", {**_GPT, "tie_word_embeddings": False}),
    "gptj-partial-interleaved": Case("GPTJForCausalLM", "GPTJConfig", {**_GPT, "rotary_dim": 4}),
    "neox-parallel-partial": Case(
        "GPTNeoXForCausalLM", "GPTNeoXConfig", {**_DECODER, "rotary_pct": 0.5}
    ),
    "neox-sequential": Case(
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        {**_DECODER, "rotary_pct": 0.25, "use_parallel_residual": False},
    ),
    "llama-gqa": _llama(),
    "llama-tied-mha": _llama(num_key_value_heads=4, tie_word_embeddings=True),
    "llama-rope-linear": _llama(**_rope("linear", factor=2.0)),
    # max_position_embeddings 8 < the test sequences: dynamic NTK scales in the forward.
    "llama-rope-dynamic": _llama(max_position_embeddings=8, **_rope("dynamic", factor=2.0)),
    "llama-rope-yarn": _llama(
        max_position_embeddings=32,
        **_rope("yarn", factor=4.0, original_max_position_embeddings=8),
    ),
    "llama3-rope": _llama(
        max_position_embeddings=64,
        **_rope(
            "llama3",
            factor=8.0,
            original_max_position_embeddings=8,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
        ),
    ),
    # A window of 4 keys, tested on sequences of 11 tokens.
    "mistral-window": Case(
        "MistralForCausalLM",
        "MistralConfig",
        {**_DECODER, "num_key_value_heads": 2, "sliding_window": 4, "head_dim": 8},
    ),
    "qwen2-biases": Case("Qwen2ForCausalLM", "Qwen2Config", {**_DECODER, "num_key_value_heads": 2}),
    "qwen2-window": Case(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        {
            **_DECODER,
            "num_key_value_heads": 2,
            "use_sliding_window": True,
            "sliding_window": 4,
            "max_window_layers": 0,
        },
    ),
    "gemma": Case(
        "GemmaForCausalLM", "GemmaConfig", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8}
    ),
    "mixtral": Case(
        "MixtralForCausalLM",
        "MixtralConfig",
        {**_DECODER, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "bert-mlm": Case(
        "BertForMaskedLM", "BertConfig", {**_DECODER, "max_position_embeddings": 32}, "encoder"
    ),
    "bert-no-head": Case(
        "BertModel", "BertConfig", {**_DECODER, "max_position_embeddings": 32}, "encoder"
    ),
    "t5-relu-tied": Case(
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 48,
            "num_layers": 2,
            "num_heads": 4,
            "decoder_start_token_id": 0,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 20,
        },
        "encoder-decoder",
    ),
    "t5-v1.1-gated-untied": Case(
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 48,
            "num_layers": 2,
            "num_decoder_layers": 3,
            "num_heads": 4,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "decoder_start_token_id": 0,
        },
        "encoder-decoder",
    ),
}


def saved(case: Case, directory: Path, **save_kwargs: Any) -> nn.Module:
    """Build `case`, ``save_pretrained`` it into `directory`; returns the HF model."""
    model = case.build()
    model.save_pretrained(directory, **save_kwargs)
    return model
