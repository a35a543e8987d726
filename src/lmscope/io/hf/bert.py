"""BERT (Devlin et al., 2019): a bidirectional post-norm encoder with learned absolute
positions, token-type (segment) embeddings and a LayerNorm on the summed embeddings;
a masked-LM head (dense, activation, LayerNorm, tied decoder with a bias) when the
checkpoint has one (``BertForMaskedLM``; ``BertModel`` checkpoints, such as sentence
encoders, have none and give hidden states).

Not used, so not loaded: the pooler (``BertModel``'s tanh layer over [CLS]) and the
next-sentence head of ``BertForPreTraining``. Positions are absolute slots as in
Hugging Face: pad on the right, or pass ``position_ids``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HF_ACTIVATION, Family, HFConfig, register
from lmscope.io.hf.rules import Rule, same, stacked

#: A tensor only masked-LM checkpoints have.
MLM_MARKER = "cls.predictions.transform.dense.weight"


@register
class Bert(Family):
    """``BertForMaskedLM`` or ``BertModel``."""

    model_type = "bert"
    hf_class = "BertForMaskedLM"
    prefix = "bert."
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "tie_word_embeddings": True,
        "position_embedding_type": "absolute",
    }
    fixed: ClassVar[dict[str, Any]] = {
        "architecture": "encoder",
        "positional": "learned",
        "norm": "layernorm",
        "norm_placement": "post",
        "final_norm": False,
        "embedding_norm": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "mlp_bias": True,
        "norm_bias": True,
    }
    ignored = (
        r"^bert\.pooler\.",
        r"^bert\.embeddings\.position_ids$",
        r"^cls\.seq_relationship\.",
        r"^cls\.predictions\.decoder\.bias$",  # the same tensor as cls.predictions.bias
    )
    head = "cls.predictions.decoder.weight"

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        kind = hf.get("position_embedding_type")
        if kind != "absolute":
            raise hf.refuse("position_embedding_type", kind, "only 'absolute'")
        for key in ("is_decoder", "add_cross_attention"):
            if hf.get(key, False):
                raise hf.refuse(key, True, "only the bidirectional encoder")
        return {
            "vocab_size": hf.require("vocab_size"),
            "d_model": hf.require("hidden_size"),
            "n_layers": hf.require("num_hidden_layers"),
            "n_heads": hf.require("num_attention_heads"),
            "d_mlp": hf.require("intermediate_size"),
            "max_seq_len": hf.require("max_position_embeddings"),
            "n_token_types": hf.require("type_vocab_size"),
            "norm_eps": float(hf.require("layer_norm_eps")),
            "activation": hf.activation("hidden_act", gated=False),
            "mlm_head": MLM_MARKER in names,
            "tie_embeddings": bool(hf.get("tie_word_embeddings")),
        }

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "architectures": ["BertForMaskedLM" if cfg.mlm_head else "BertModel"],
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.mlp_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "type_vocab_size": cfg.n_token_types,
            "layer_norm_eps": cfg.norm_eps,
            "hidden_act": HF_ACTIVATION[cfg.activation],
            "position_embedding_type": "absolute",
            "tie_word_embeddings": cfg.tie_embeddings,
        }

    def headless(self, cfg: ModelConfig) -> bool:
        return not cfg.mlm_head

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        emb = "bert.embeddings."
        kinds = ("weight", "bias")
        rules = [
            same("embed.weight", emb + "word_embeddings.weight"),
            same("pos_embed.weight", emb + "position_embeddings.weight"),
            *[same(f"ln_embed.{k}", f"{emb}LayerNorm.{k}") for k in kinds],
        ]
        if cfg.n_token_types:
            rules.append(same("token_type_embed.weight", emb + "token_type_embeddings.weight"))
        d = cfg.n_heads * cfg.head_dim
        for i in range(cfg.n_layers):
            ours, theirs = f"blocks.{i}.", f"bert.encoder.layer.{i}."
            for k in kinds:
                qkv = [f"{theirs}attention.self.{p}.{k}" for p in ("query", "key", "value")]
                rules += [
                    stacked(f"{ours}attn.qkv.{k}", qkv, [d, d, d]),
                    same(f"{ours}attn.out.{k}", f"{theirs}attention.output.dense.{k}"),
                    same(f"{ours}ln1.{k}", f"{theirs}attention.output.LayerNorm.{k}"),
                    same(f"{ours}mlp.fc_in.{k}", f"{theirs}intermediate.dense.{k}"),
                    same(f"{ours}mlp.fc_out.{k}", f"{theirs}output.dense.{k}"),
                    same(f"{ours}ln2.{k}", f"{theirs}output.LayerNorm.{k}"),
                ]
        if cfg.mlm_head:
            head = "cls.predictions."
            for k in kinds:
                rules.append(same(f"mlm_head.dense.{k}", f"{head}transform.dense.{k}"))
                rules.append(same(f"mlm_head.ln.{k}", f"{head}transform.LayerNorm.{k}"))
            rules.append(same("mlm_head.unembed.bias", head + "bias"))
            if not cfg.tie_embeddings:
                rules.append(same("mlm_head.unembed.weight", head + "decoder.weight"))
        return rules
