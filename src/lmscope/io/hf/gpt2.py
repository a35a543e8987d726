"""GPT-2 (Radford et al., 2019): learned positions, pre-norm LayerNorm, tanh-GELU MLP,
head tied to the embedding.

Its linear layers are ``Conv1D`` modules that store weights as ``[in, out]``, the
transpose of ``nn.Linear``'s ``[out, in]``: every weight is transposed. ``c_attn``'s
output columns are already ``[q | k | v]``, lmscope's fused row order once transposed.
Old checkpoints also hold the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HF_ACTIVATION, Family, HFConfig, register
from lmscope.io.hf.rules import Rule, same, transposed


@register
class GPT2(Family):
    """``GPT2LMHeadModel``."""

    model_type = "gpt2"
    hf_class = "GPT2LMHeadModel"
    prefix = "transformer."
    defaults: ClassVar[dict[str, Any]] = {
        "n_positions": 1024,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
    }
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "decoder",
        "positional": "learned",
        "norm": "layernorm",
        "norm_placement": "pre",
        "final_norm": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "norm_bias": True,
    }
    ignored = (r"\.attn\.(masked_)?bias$",)

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if hf.get(key, False):
                raise hf.refuse(key, True, "only the standard GPT-2 block")
        d_model = hf.require("n_embd")
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": d_model,
            "n_layers": hf.require("n_layer"),
            "n_heads": hf.require("n_head"),
            "d_mlp": hf.get("n_inner") or 4 * d_model,
            "max_seq_len": hf.require("n_positions"),
            "norm_eps": float(hf.require("layer_norm_epsilon")),
            "activation": hf.activation("activation_function", gated=False),
            "tie_embeddings": bool(hf.get("tie_word_embeddings")),
            # reorder_and_upcast_attn only changes fp16 rounding, not the function.
            "attention_scale": None if hf.get("scale_attn_weights") else "none",
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.mlp_dim,
            "n_positions": cfg.max_seq_len,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": HF_ACTIVATION[cfg.activation],
            "tie_word_embeddings": cfg.tie_embeddings,
            "scale_attn_weights": cfg.attention_scale != "none",
        }

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        rules = [
            same("embed.weight", "transformer.wte.weight"),
            same("pos_embed.weight", "transformer.wpe.weight"),
        ]
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
                rules += [same(f"{ours}{a}.{k}", f"{theirs}{b}.{k}") for k in ("weight", "bias")]
            for a, b in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.out", "attn.c_proj"),
                ("mlp.fc_in", "mlp.c_fc"),
                ("mlp.fc_out", "mlp.c_proj"),
            ):
                rules.append(transposed(f"{ours}{a}.weight", f"{theirs}{b}.weight"))
                rules.append(same(f"{ours}{a}.bias", f"{theirs}{b}.bias"))
        rules += [same(f"ln_final.{k}", f"transformer.ln_f.{k}") for k in ("weight", "bias")]
        if not cfg.tie_embeddings:
            rules.append(same("unembed.weight", "lm_head.weight"))
        return rules
