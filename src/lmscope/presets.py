"""Named model presets, as data.

A preset is a dict of `ModelConfig` fields; only what differs from the defaults is
written. Shapes follow the papers / reference checkpoints so that a preset can hold
those weights; the `*-tiny` presets keep a family's wiring at a size that runs on a
laptop CPU in milliseconds.
"""

from __future__ import annotations

from typing import Any

from lmscope.errors import ConfigError, did_you_mean

_GPT2 = dict(
    architecture="decoder",
    vocab_size=50257,
    max_seq_len=1024,
    positional="learned",
    norm="layernorm",
    activation="gelu_tanh",
    tie_embeddings=True,
)

_LLAMA_WIRING = dict(
    positional="rope",
    rope_layout="rotate-half",
    norm="rmsnorm",
    norm_eps=1e-5,
    activation="swiglu",
    qkv_bias=False,
    attn_out_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 (Radford et al., 2019): learned positions, pre-norm, tied head.
    "gpt2-small": {**_GPT2, "d_model": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium": {**_GPT2, "d_model": 1024, "n_layers": 24, "n_heads": 16},
    # Llama wiring (RoPE, RMSNorm, SwiGLU, no biases, untied) at toy size.
    "llama-tiny": {
        **_LLAMA_WIRING,
        "vocab_size": 32000,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 8,
        "d_mlp": 688,
        "max_seq_len": 512,
    },
    # Mistral: Llama wiring plus grouped-query attention and a sliding window.
    "mistral-tiny": {
        **_LLAMA_WIRING,
        "vocab_size": 32000,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 8,
        "n_kv_heads": 2,
        "d_mlp": 768,
        "max_seq_len": 512,
        "sliding_window": 128,
    },
    # Mixtral: Mistral with a top-2-of-4 sparse mixture of SwiGLU experts.
    "mixtral-tiny": {
        **_LLAMA_WIRING,
        "vocab_size": 32000,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 8,
        "n_kv_heads": 2,
        "d_mlp": 512,
        "max_seq_len": 512,
        "sliding_window": 128,
        "n_experts": 4,
        "experts_per_token": 2,
    },
    # BERT-base (Devlin et al., 2019): bidirectional encoder, post-norm, MLM head.
    "bert-base": {
        "architecture": "encoder",
        "vocab_size": 30522,
        "d_model": 768,
        "n_layers": 12,
        "n_heads": 12,
        "max_seq_len": 512,
        "positional": "learned",
        "norm": "layernorm",
        "norm_placement": "post",
        "norm_eps": 1e-12,
        "activation": "gelu",
        "mlm_head": True,
        "n_token_types": 2,
        "embedding_norm": True,
        "tie_embeddings": True,
    },
    # T5-small (Raffel et al., 2020): bucketed relative bias, RMSNorm, no QK scaling.
    "t5-small": {
        "architecture": "encoder-decoder",
        "vocab_size": 32128,
        "d_model": 512,
        "n_layers": 6,
        "n_decoder_layers": 6,
        "n_heads": 8,
        "d_head": 64,
        "d_mlp": 2048,
        "max_seq_len": 512,
        "positional": "t5-bias",
        "t5_num_buckets": 32,
        "t5_max_distance": 128,
        "norm": "rmsnorm",
        "norm_eps": 1e-6,
        "activation": "relu",
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "attention_scale": "none",
        "tie_embeddings": True,
    },
    # nanoGPT's "baby GPT" for character-level Shakespeare (train_shakespeare_char.py).
    "shakespeare-char": {
        "vocab_size": 65,
        "d_model": 384,
        "n_layers": 6,
        "n_heads": 6,
        "max_seq_len": 256,
        "positional": "learned",
        "activation": "gelu",
        "dropout": 0.2,
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
        "norm_bias": False,
        "tie_embeddings": True,
    },
    # Two attention-only layers, the shape of TransformerLens's attn-only-2l toy model:
    # the smallest model with induction heads.
    "attn-only-2l": {
        "vocab_size": 48262,
        "d_model": 512,
        "n_layers": 2,
        "n_heads": 8,
        "max_seq_len": 2048,
        "positional": "learned",
        "attn_only": True,
        "tie_embeddings": False,
    },
}


def preset_names() -> list[str]:
    """Names of all presets."""
    return list(PRESETS)


def preset_dict(name: str) -> dict[str, Any]:
    """The fields of preset `name` (a copy), including its name."""
    if name not in PRESETS:
        raise ConfigError(
            "name",
            name,
            f"unknown preset; choose one of {', '.join(PRESETS)}.",
            did_you_mean(name, PRESETS),
        )
    return {"name": name, **PRESETS[name]}
