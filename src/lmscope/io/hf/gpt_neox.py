"""GPT-NeoX and Pythia (Black et al., 2022; Biderman et al., 2023): parallel blocks with
two LayerNorms (``use_parallel_residual``; sequential pre-norm blocks when false), RoPE
on a fraction of each head (``rotary_pct``, 0.25 in Pythia) in the rotate-half layout,
an untied head (``embed_out``).

The fused ``query_key_value`` projection groups its rows per head (``[q_h; k_h; v_h]``
for each head h); lmscope's fused rows are all queries, then keys, then values, so the
rows are regrouped (`rules.per_head_interleaved`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HF_ACTIVATION, Family, HFConfig, register, rope_to_hf
from lmscope.io.hf.rules import Rule, per_head_interleaved, same


@register
class GPTNeoX(Family):
    """``GPTNeoXForCausalLM``."""

    model_type = "gpt_neox"
    hf_class = "GPTNeoXForCausalLM"
    prefix = "gpt_neox."
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "gelu",
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "use_parallel_residual": True,
        "attention_bias": True,
        "rope_theta": 10000.0,
    }
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "decoder",
        "rope_layout": "rotate-half",
        "norm": "layernorm",
        "norm_placement": "pre",
        "final_norm": True,
        "parallel_shared_norm": False,
        "mlp_bias": True,
        "norm_bias": True,
    }
    ignored = (r"\.attention\.(masked_)?bias$", r"\.rotary_emb\.inv_freq$")
    head = "embed_out.weight"

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        d_model, n_heads = hf.require("hidden_size"), hf.require("num_attention_heads")
        max_positions = hf.require("max_position_embeddings")
        # transformers 5 keeps rotary_pct / rotary_emb_base under rope_parameters; older
        # configs have them at the top level (defaults 0.25 and 10000).
        data = dict(hf.data)
        params = dict(data.get("rope_scaling") or data.get("rope_parameters") or {})
        params.setdefault("rope_theta", data.get("rotary_emb_base", 10000.0))
        params.setdefault("partial_rotary_factor", data.get("rotary_pct", 0.25))
        rope_hf = HFConfig({**data, "rope_parameters": params, "rope_scaling": None}, self)
        attention_bias = bool(hf.get("attention_bias"))
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": d_model,
            "n_layers": hf.require("num_hidden_layers"),
            "n_heads": n_heads,
            "d_mlp": hf.require("intermediate_size"),
            "max_seq_len": max_positions,
            **rope_hf.rope(d_model // n_heads, max_positions),
            "norm_eps": float(hf.require("layer_norm_eps")),
            "activation": hf.activation("hidden_act", gated=False),
            "parallel_attn_mlp": bool(hf.get("use_parallel_residual")),
            "qkv_bias": attention_bias,
            "attn_out_bias": attention_bias,
            "tie_embeddings": bool(hf.get("tie_word_embeddings")),
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.mlp_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "layer_norm_eps": cfg.norm_eps,
            "hidden_act": HF_ACTIVATION[cfg.activation],
            "use_parallel_residual": cfg.parallel_attn_mlp,
            "attention_bias": cfg.qkv_bias,
            "tie_word_embeddings": cfg.tie_embeddings,
            **rope_to_hf_neox(cfg),
        }

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "gpt_neox.embed_in.weight")]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"gpt_neox.layers.{i}."
            kinds = ("weight", "bias")
            for a, b in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
                rules += [same(f"{ours}{a}.{k}", f"{theirs}{b}.{k}") for k in kinds]
            attn_kinds = kinds if cfg.qkv_bias else ("weight",)
            for k in attn_kinds:
                rules.append(
                    per_head_interleaved(
                        f"{ours}attn.qkv.{k}",
                        f"{theirs}attention.query_key_value.{k}",
                        cfg.n_heads,
                        cfg.head_dim,
                    )
                )
                rules.append(same(f"{ours}attn.out.{k}", f"{theirs}attention.dense.{k}"))
            for k in kinds:
                rules.append(same(f"{ours}mlp.fc_in.{k}", f"{theirs}mlp.dense_h_to_4h.{k}"))
                rules.append(same(f"{ours}mlp.fc_out.{k}", f"{theirs}mlp.dense_4h_to_h.{k}"))
        rules += [same(f"ln_final.{k}", f"gpt_neox.final_layer_norm.{k}") for k in kinds]
        if not cfg.tie_embeddings:
            rules.append(same("unembed.weight", "embed_out.weight"))
        return rules


def rope_to_hf_neox(cfg: ModelConfig) -> dict[str, Any]:
    """NeoX's rope parameters always carry the rotated fraction (its default is 0.25)."""
    data = rope_to_hf(cfg)
    data["rope_parameters"]["partial_rotary_factor"] = cfg.rotary_fraction
    return data
