"""Presets: every one builds, and its parameter count equals the reference model's.

Big models are built on the meta device (shapes only, no memory); the Hugging Face
references are too, and ``sum(p.numel() for p in hf.parameters())`` counts tied weights
once, as `num_params()` does.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lmscope import ModelConfig, build_model
from lmscope.model import ARCHITECTURES
from lmscope.model.base import BaseTransformer
from lmscope.presets import preset_names
from tests.conftest import small

transformers = pytest.importorskip("transformers")


def _meta_model(name: str) -> BaseTransformer:
    cfg = ModelConfig.from_preset(name)
    with torch.device("meta"):
        return ARCHITECTURES[cfg.architecture](cfg)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_hf(model_cls: type, config: object) -> nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return model_cls(config)


# --- every preset builds ------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_on_meta_with_consistent_breakdown(name: str) -> None:
    model = _meta_model(name)
    assert model.cfg.name == name
    assert all(p.is_meta for p in model.parameters())
    parts = model.param_breakdown()
    # Every parameter belongs to a named component, and tied weights are counted once.
    assert set(parts) == {"embedding", "positional", "attention", "mlp", "norm", "unembedding"}
    assert sum(parts.values()) == model.num_params() == _count(model)
    assert model.num_params(exclude_embeddings=True) == (
        model.num_params() - parts["embedding"] - parts["positional"]
    )


@pytest.mark.parametrize("name", preset_names())
def test_every_small_preset_builds_and_runs_on_cpu(name: str) -> None:
    model = build_model(small(name)).eval()
    tokens = torch.randint(0, 61, (2, 5))
    with torch.no_grad():
        out = (
            model(tokens, tokens) if model.cfg.architecture == "encoder-decoder" else model(tokens)
        )
    width = (
        model.cfg.d_model if model.cfg.architecture == "encoder" and not model.cfg.mlm_head else 61
    )
    assert out.shape == (2, 5, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["gpt2-small", "bert-base", "t5-small", "shakespeare-char"])
def test_tied_presets_store_the_unembedding_once(name: str) -> None:
    model = _meta_model(name)
    assert model.cfg.tie_embeddings
    d, vocab = model.cfg.d_model, model.cfg.vocab_size
    # Only BERT's MLM head has unembedding parameters: dense layer + vocab bias (its
    # LayerNorm counts as a norm).
    expected = d * d + d + vocab if model.cfg.mlm_head else 0
    assert model.param_breakdown()["unembedding"] == expected
    assert not any(k.endswith("unembed.weight") for k in model.state_dict())


# --- parity with Hugging Face ---------------------------------------------------------------


def test_gpt2_small_param_count_matches_hugging_face() -> None:
    hf = _meta_hf(transformers.GPT2LMHeadModel, transformers.GPT2Config())
    assert _count(hf) == 124_439_808
    assert _meta_model("gpt2-small").num_params() == 124_439_808


def test_gpt2_medium_param_count_matches_hugging_face() -> None:
    hf_cfg = transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    hf = _meta_hf(transformers.GPT2LMHeadModel, hf_cfg)
    assert _meta_model("gpt2-medium").num_params() == _count(hf) == 354_823_168


def test_bert_base_param_count_matches_hugging_face_masked_lm() -> None:
    # BertForMaskedLM has no pooler; its head (dense, LayerNorm, tied decoder + bias) is ours.
    hf = _meta_hf(transformers.BertForMaskedLM, transformers.BertConfig())
    ours = _meta_model("bert-base")
    assert ours.num_params() == _count(hf) == 109_514_298
    hf_embeddings = _count(hf.bert.embeddings)  # word + position + token type + LayerNorm
    parts = ours.param_breakdown()
    ln_embed = 2 * 768
    assert parts["embedding"] + parts["positional"] + ln_embed == hf_embeddings
    # hf.cls counted alone includes the tied decoder weight; our head's LayerNorm is a norm.
    assert parts["unembedding"] + ln_embed == _count(hf.cls) - 30522 * 768


def test_t5_small_param_count_matches_hugging_face() -> None:
    hf = _meta_hf(transformers.T5ForConditionalGeneration, transformers.T5Config())
    assert _meta_model("t5-small").num_params() == _count(hf) == 60_506_624


def _llama_like_kwargs(cfg: ModelConfig) -> dict[str, object]:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
    }


def test_llama_tiny_param_count_matches_hugging_face() -> None:
    cfg = ModelConfig.from_preset("llama-tiny")
    hf_cfg = transformers.LlamaConfig(**_llama_like_kwargs(cfg), mlp_bias=False)
    hf = _meta_hf(transformers.LlamaForCausalLM, hf_cfg)
    assert _meta_model("llama-tiny").num_params() == _count(hf) == 19_548_416


def test_mistral_tiny_param_count_matches_hugging_face() -> None:
    cfg = ModelConfig.from_preset("mistral-tiny")
    kwargs = _llama_like_kwargs(cfg)
    del kwargs["attention_bias"]
    hf_cfg = transformers.MistralConfig(**kwargs, sliding_window=cfg.sliding_window)
    hf = _meta_hf(transformers.MistralForCausalLM, hf_cfg)
    assert _meta_model("mistral-tiny").num_params() == _count(hf) == 19_400_960


def test_mixtral_tiny_param_count_matches_hugging_face() -> None:
    cfg = ModelConfig.from_preset("mixtral-tiny")
    kwargs = _llama_like_kwargs(cfg)
    del kwargs["attention_bias"]
    hf_cfg = transformers.MixtralConfig(
        **kwargs,
        sliding_window=cfg.sliding_window,
        num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.experts_per_token,
    )
    hf = _meta_hf(transformers.MixtralForCausalLM, hf_cfg)
    assert _meta_model("mixtral-tiny").num_params() == _count(hf) == 23_337_216


# --- counts from the papers / by hand -----------------------------------------------------


def test_shakespeare_char_matches_nanogpt_reported_count() -> None:
    # nanoGPT prints "number of parameters: 10.65M", excluding position embeddings.
    model = _meta_model("shakespeare-char")
    positional = model.param_breakdown()["positional"]
    assert positional == 256 * 384
    assert model.num_params() - positional == 10_646_784


def test_attn_only_2l_param_count_by_hand() -> None:
    vocab, d, n_ctx, n_layers = 48262, 512, 2048, 2
    per_layer = (
        d * 3 * d
        + 3 * d  # fused QKV weight + bias
        + d * d
        + d  # output projection
        + 2 * d  # ln1 weight + bias
    )
    expected = (
        vocab * d  # embedding
        + n_ctx * d  # learned positions
        + n_layers * per_layer
        + 2 * d  # final LayerNorm
        + vocab * d  # untied unembedding, no bias
    )
    model = _meta_model("attn-only-2l")
    assert model.num_params() == expected == 52_573_184
    assert model.param_breakdown()["mlp"] == 0


# --- FLOPs and KV-cache size ------------------------------------------------------------------


def _gpt2_small_flops(seq_len: int) -> int:
    d, n_layers, n_heads, d_head, vocab = 768, 12, 12, 64, 50257
    matmul_params = n_layers * (d * 3 * d + d * d + d * 4 * d + 4 * d * d)
    return 2 * (matmul_params + d * vocab) + 4 * n_layers * n_heads * d_head * seq_len


@pytest.mark.parametrize("seq_len", [1, 128, 1024])
def test_gpt2_small_flops_per_token_by_hand(seq_len: int) -> None:
    model = _meta_model("gpt2-small")
    assert model.flops_per_token(seq_len) == _gpt2_small_flops(seq_len)


def test_flops_per_token_defaults_to_max_seq_len() -> None:
    model = _meta_model("gpt2-small")
    assert model.flops_per_token() == _gpt2_small_flops(1024)


def test_mixtral_tiny_flops_count_only_the_chosen_experts() -> None:
    d, kv, d_mlp, vocab, n_layers, seq = 256, 2 * 32, 512, 32000, 4, 100
    expert = d * 2 * d_mlp + d_mlp * d  # gated: fused gate+linear, then out
    per_layer = d * (d + 2 * kv) + d * d + d * 4 + 2 * expert  # 2 of 4 experts run
    expected = 2 * (n_layers * per_layer + d * vocab) + 4 * n_layers * 8 * 32 * seq
    assert _meta_model("mixtral-tiny").flops_per_token(seq) == expected


@pytest.mark.parametrize(
    ("name", "cached_layers", "kv_heads", "d_head"),
    [
        ("gpt2-small", 12, 12, 64),
        ("gpt2-medium", 24, 16, 64),
        ("llama-tiny", 4, 8, 32),
        ("mistral-tiny", 4, 2, 32),  # GQA: only the key/value heads are cached
        ("t5-small", 6, 8, 64),  # decoder self-attention only
        ("shakespeare-char", 6, 6, 64),
    ],
)
def test_kv_cache_bytes_per_token_by_hand(
    name: str, cached_layers: int, kv_heads: int, d_head: int
) -> None:
    model = _meta_model(name)
    per_element = 2 * cached_layers * kv_heads * d_head
    assert model.kv_cache_bytes_per_token() == per_element * 4  # meta model is float32
    assert model.kv_cache_bytes_per_token(torch.float32) == per_element * 4
    assert model.kv_cache_bytes_per_token(torch.bfloat16) == per_element * 2


def test_kv_cache_bytes_of_an_encoder_is_zero() -> None:
    model = _meta_model("bert-base")
    assert model.kv_cache_bytes_per_token(torch.float32) == 0


def test_kv_cache_bytes_follow_the_model_dtype() -> None:
    model = build_model(small("gpt2-small"), dtype=torch.bfloat16)
    assert model.kv_cache_bytes_per_token() == 2 * 2 * 4 * 8 * 2
