"""Llama (1, 2, 3) and the layout its descendants share (Mistral, Qwen2, Gemma, Mixtral).

Llama (Touvron et al., 2023): pre-norm RMSNorm, RoPE in the rotate-half layout (Hugging
Face's checkpoints are already permuted for it, so no permutation is needed), SwiGLU,
no biases, grouped-query attention from Llama 2 70B on, an untied head, and RoPE
scaling (linear, dynamic NTK, YaRN, llama3) for longer contexts.

Checkpoint layout: ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``. lmscope fuses q/k/v rows into ``attn.qkv`` and gate/up
rows into ``mlp.fc_in``. The variants in ``mistral.py``, ``qwen2.py``, ``gemma.py`` and
``mixtral.py`` override only what differs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HF_ACTIVATION, Family, HFConfig, optional, register, rope_to_hf
from lmscope.io.hf.rules import Rule, same, stacked


class LlamaLayout(Family):
    """Config and weights of the Llama layout; subclasses adjust the hooks below."""

    prefix = "model."
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "decoder",
        "rope_layout": "rotate-half",
        "norm": "rmsnorm",
        "norm_placement": "pre",
        "final_norm": True,
    }
    ignored = (r"\.rotary_emb\.inv_freq$",)

    # --- config ------------------------------------------------------------------------
    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        d_model, n_heads = hf.require("hidden_size"), hf.require("num_attention_heads")
        head_dim = hf.get("head_dim") or d_model // n_heads
        max_positions = hf.require("max_position_embeddings")
        n_kv = hf.get("num_key_value_heads") or n_heads
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": d_model,
            "n_layers": hf.require("num_hidden_layers"),
            "n_heads": n_heads,
            "n_kv_heads": optional(n_kv, n_heads),
            "d_head": optional(head_dim, d_model // n_heads),
            "d_mlp": hf.require("intermediate_size"),
            "max_seq_len": max_positions,
            **hf.rope(head_dim, max_positions),
            "norm_eps": float(hf.require("rms_norm_eps")),
            "activation": hf.activation("hidden_act", gated=True),
            "tie_embeddings": bool(hf.get("tie_word_embeddings")),
            **self.variant_fields(hf),
        }

    def variant_fields(self, hf: HFConfig) -> dict[str, Any]:
        """Fields that differ between the Llama-layout families (biases, windows...)."""
        attention_bias = bool(hf.get("attention_bias", False))
        return {
            "qkv_bias": attention_bias,
            "attn_out_bias": attention_bias,
            "mlp_bias": bool(hf.get("mlp_bias", False)),
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.mlp_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": HF_ACTIVATION[cfg.activation],
            "tie_word_embeddings": cfg.tie_embeddings,
            **rope_to_hf(cfg),
            **self.variant_to_hf(cfg),
        }

    def variant_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """The ``config.json`` keys of `variant_fields`."""
        return {"attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}

    # --- weights -----------------------------------------------------------------------
    def rules(self, cfg: ModelConfig) -> list[Rule]:
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        rules = [same("embed.weight", "model.embed_tokens.weight")]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            attn = theirs + "self_attn."
            kinds = ["weight", "bias"] if cfg.qkv_bias else ["weight"]
            for kind in kinds:
                sources = [f"{attn}{p}_proj.{kind}" for p in "qkv"]
                rules.append(stacked(f"{ours}attn.qkv.{kind}", sources, [q_dim, kv_dim, kv_dim]))
            rules.append(same(ours + "attn.out.weight", attn + "o_proj.weight"))
            if cfg.attn_out_bias:
                rules.append(same(ours + "attn.out.bias", attn + "o_proj.bias"))
            rules.append(same(ours + "ln1.weight", theirs + "input_layernorm.weight"))
            rules.append(same(ours + "ln2.weight", theirs + "post_attention_layernorm.weight"))
            rules += self.mlp_rules(cfg, ours, theirs)
        rules.append(same("ln_final.weight", "model.norm.weight"))
        if not cfg.tie_embeddings:
            rules.append(same("unembed.weight", "lm_head.weight"))
        return rules

    def mlp_rules(self, cfg: ModelConfig, ours: str, theirs: str) -> list[Rule]:
        """The MLP of one layer: gate and up rows fused into ``fc_in``."""
        mlp, m = theirs + "mlp.", cfg.mlp_dim
        kinds = ["weight", "bias"] if cfg.mlp_bias else ["weight"]
        rules = []
        for kind in kinds:
            sources = [f"{mlp}gate_proj.{kind}", f"{mlp}up_proj.{kind}"]
            rules.append(stacked(f"{ours}mlp.fc_in.{kind}", sources, [m, m]))
            rules.append(same(f"{ours}mlp.fc_out.{kind}", f"{mlp}down_proj.{kind}"))
        return rules


@register
class Llama(LlamaLayout):
    """Llama 1, 2 and 3 (``LlamaForCausalLM``)."""

    model_type = "llama"
    hf_class = "LlamaForCausalLM"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
    }
