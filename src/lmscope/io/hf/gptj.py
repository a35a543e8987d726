"""GPT-J (Wang & Komatsuzaki, 2021): a parallel block whose attention and MLP read one
shared LayerNorm, RoPE on the first ``rotary_dim`` dims of each head in the interleaved
layout (pairs 2i, 2i+1, ``rotate_every_two``), no attention biases, an untied head with a
bias.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HF_ACTIVATION, Family, HFConfig, register
from lmscope.io.hf.rules import Rule, same, stacked


@register
class GPTJ(Family):
    """``GPTJForCausalLM``."""

    model_type = "gptj"
    hf_class = "GPTJForCausalLM"
    prefix = "transformer."
    defaults: ClassVar[dict[str, Any]] = {
        "n_positions": 2048,
        "rotary_dim": 64,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": False,
    }
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "decoder",
        "positional": "rope",
        "rope_layout": "interleaved",
        "rope_theta": 10000.0,
        "norm": "layernorm",
        "norm_placement": "pre",
        "final_norm": True,
        "parallel_attn_mlp": True,
        "parallel_shared_norm": True,
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": True,
        "norm_bias": True,
        "unembed_bias": True,
    }
    ignored = (r"\.attn\.(masked_)?bias$",)

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        d_model, n_heads = hf.require("n_embd"), hf.require("n_head")
        if "rotary_dim" in hf.data and hf.data["rotary_dim"] is None:
            # transformers then builds tables of width n_embd for heads of d_model / n_head
            raise hf.refuse("rotary_dim", None, "a number of rotated dims per head")
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": d_model,
            "n_layers": hf.require("n_layer"),
            "n_heads": n_heads,
            "d_mlp": hf.get("n_inner") or 4 * d_model,
            "max_seq_len": hf.require("n_positions"),
            "rotary_fraction": hf.require("rotary_dim") / (d_model // n_heads),
            "norm_eps": float(hf.require("layer_norm_epsilon")),
            "activation": hf.activation("activation_function", gated=False),
            "tie_embeddings": bool(hf.get("tie_word_embeddings")),
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.mlp_dim,
            "n_positions": cfg.max_seq_len,
            "rotary_dim": cfg.rotary_dim,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": HF_ACTIVATION[cfg.activation],
            "tie_word_embeddings": cfg.tie_embeddings,
        }

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        d = cfg.n_heads * cfg.head_dim
        rules = [same("embed.weight", "transformer.wte.weight")]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            rules += [same(f"{ours}ln1.{k}", f"{theirs}ln_1.{k}") for k in ("weight", "bias")]
            qkv = [f"{theirs}attn.{p}_proj.weight" for p in "qkv"]
            rules.append(stacked(ours + "attn.qkv.weight", qkv, [d, d, d]))
            rules.append(same(ours + "attn.out.weight", theirs + "attn.out_proj.weight"))
            for k in ("weight", "bias"):
                rules.append(same(f"{ours}mlp.fc_in.{k}", f"{theirs}mlp.fc_in.{k}"))
                rules.append(same(f"{ours}mlp.fc_out.{k}", f"{theirs}mlp.fc_out.{k}"))
        rules += [same(f"ln_final.{k}", f"transformer.ln_f.{k}") for k in ("weight", "bias")]
        if not cfg.tie_embeddings:
            rules.append(same("unembed.weight", "lm_head.weight"))
        rules.append(same("unembed.bias", "lm_head.bias"))
        return rules
