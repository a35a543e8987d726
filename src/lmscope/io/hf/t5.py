"""T5 (Raffel et al., 2020) and T5 v1.1: encoder-decoder with RMSNorm ("T5LayerNorm"),
a learned relative-position bias per bucket and head computed in the first layer of
each stack and shared by all its layers, no scaling of QK^T, no biases.

- ``feed_forward_proj``: "relu" (T5) or "gated-gelu" (v1.1: GeGLU with the tanh
  approximation, ``wi_0`` gate and ``wi_1`` linear).
- The head: ``lm_head.weight`` when the checkpoint stores one (v1.1), else the shared
  embedding (T5). transformers 5 decides the same way: it ties the head unless the file
  holds an ``lm_head`` that differs from ``shared``.
- The decoder output is rescaled by ``d_model^-0.5`` before the head (``unembed_scale``)
  when ``scale_decoder_outputs`` (transformers 5) is true, or, in older configs, unless
  ``tie_word_embeddings`` is false (T5 scales, v1.1 does not).
- Checkpoints repeat the shared embedding as ``encoder.embed_tokens`` /
  ``decoder.embed_tokens``; those copies are not read.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import Family, HFConfig, register
from lmscope.io.hf.rules import Rule, same, stacked

#: lmscope activation -> T5's ``feed_forward_proj``.
T5_PROJ = {"relu": "relu", "gelu": "gelu", "silu": "silu", "reglu": "gated-relu"}
T5_PROJ |= {"geglu_tanh": "gated-gelu", "swiglu": "gated-silu"}


@register
class T5(Family):
    """``T5ForConditionalGeneration``."""

    model_type = "t5"
    hf_class = "T5ForConditionalGeneration"
    defaults: ClassVar[dict[str, Any]] = {
        "feed_forward_proj": "relu",
        "layer_norm_epsilon": 1e-6,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "n_positions": 512,
    }
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "encoder-decoder",
        "positional": "t5-bias",
        "norm": "rmsnorm",
        "norm_placement": "pre",
        "final_norm": True,
        "attention_scale": "none",
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
    }
    ignored = (
        r"^(encoder|decoder)\.embed_tokens\.weight$",
        # Old checkpoints carry a relative bias in cross attention that T5 never uses.
        r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
    )

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        proj = hf.get("feed_forward_proj")
        parts = proj.split("-")
        gated = parts[0] == "gated"
        if len(parts) > 2 or (len(parts) == 2 and not gated):
            raise hf.refuse("feed_forward_proj", proj, "'ACT' or 'gated-ACT'")
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # as T5Config does
        activation = HFConfig({"act": act}, self, hf.source).activation("act", gated)
        d_model = hf.require("d_model")
        legacy_scale = hf.data.get("tie_word_embeddings", True) is not False
        scale = hf.data.get("scale_decoder_outputs", legacy_scale)
        n_layers = hf.require("num_layers")
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": d_model,
            "n_layers": n_layers,
            "n_decoder_layers": hf.get("num_decoder_layers") or n_layers,
            "n_heads": hf.require("num_heads"),
            "d_head": hf.require("d_kv"),
            "d_mlp": hf.require("d_ff"),
            "max_seq_len": hf.require("n_positions"),
            "t5_num_buckets": hf.require("relative_attention_num_buckets"),
            "t5_max_distance": hf.require("relative_attention_max_distance"),
            "norm_eps": float(hf.require("layer_norm_epsilon")),
            "activation": activation,
            "tie_embeddings": "lm_head.weight" not in names,
            "unembed_scale": d_model**-0.5 if scale else 1.0,
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model,
            "num_layers": cfg.n_layers,
            "num_decoder_layers": cfg.decoder_layers,
            "num_heads": cfg.n_heads,
            "d_kv": cfg.head_dim,
            "d_ff": cfg.mlp_dim,
            "n_positions": cfg.max_seq_len,
            "relative_attention_num_buckets": cfg.t5_num_buckets,
            "relative_attention_max_distance": cfg.t5_max_distance,
            "layer_norm_epsilon": cfg.norm_eps,
            "feed_forward_proj": T5_PROJ.get(cfg.activation, cfg.activation),
            "tie_word_embeddings": cfg.tie_embeddings,
            "scale_decoder_outputs": cfg.unembed_scale != 1.0,
            "is_encoder_decoder": True,
            "decoder_start_token_id": 0,
        }

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "shared.weight")]
        for stack, n in (("encoder", cfg.n_layers), ("decoder", cfg.decoder_layers)):
            bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            rules.append(same(f"{stack}_pos_bias.weight", bias))
            for i in range(n):
                ours, theirs = f"{stack}.{i}.", f"{stack}.block.{i}.layer."
                rules += _attention(ours + "attn", theirs + "0.SelfAttention", cfg)
                rules.append(same(ours + "ln1.weight", theirs + "0.layer_norm.weight"))
                mlp_layer = 1
                if stack == "decoder":
                    rules += _attention(ours + "cross_attn", theirs + "1.EncDecAttention", cfg)
                    rules.append(same(ours + "ln2.weight", theirs + "1.layer_norm.weight"))
                    mlp_layer = 2
                ff = f"{theirs}{mlp_layer}.DenseReluDense."
                mlp_norm = "ln3" if stack == "decoder" else "ln2"
                rules.append(
                    same(f"{ours}{mlp_norm}.weight", f"{theirs}{mlp_layer}.layer_norm.weight")
                )
                if cfg.is_gated:
                    gate_up = [ff + "wi_0.weight", ff + "wi_1.weight"]
                    rules.append(stacked(ours + "mlp.fc_in.weight", gate_up, [cfg.mlp_dim] * 2))
                else:
                    rules.append(same(ours + "mlp.fc_in.weight", ff + "wi.weight"))
                rules.append(same(ours + "mlp.fc_out.weight", ff + "wo.weight"))
            rules.append(same(f"{stack}_final_ln.weight", f"{stack}.final_layer_norm.weight"))
        if not cfg.tie_embeddings:
            rules.append(same("unembed.weight", "lm_head.weight"))
        return rules


def _attention(ours: str, theirs: str, cfg: ModelConfig) -> list[Rule]:
    d = cfg.n_heads * cfg.head_dim
    qkv = [f"{theirs}.{p}.weight" for p in "qkv"]
    return [
        stacked(ours + ".qkv.weight", qkv, [d, d, d]),
        same(ours + ".out.weight", theirs + ".o.weight"),
    ]
