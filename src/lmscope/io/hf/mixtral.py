"""Mixtral (Jiang et al., 2024): Mistral whose MLPs are sparse mixtures of SwiGLU experts.

Routing as in the reference: softmax of the router logits in float32 over all experts,
top ``num_experts_per_tok``, renormalised to sum to one (lmscope's MoE with
``moe_normalize_topk``). Checkpoints store each expert as ``w1`` (gate), ``w3`` (up)
and ``w2`` (down) under ``block_sparse_moe``; transformers 5 fuses them in memory but
writes this layout, which is what lmscope reads and writes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HFConfig, register
from lmscope.io.hf.llama import LlamaLayout
from lmscope.io.hf.rules import Rule, same, stacked


@register
class Mixtral(LlamaLayout):
    """``MixtralForCausalLM``."""

    model_type = "mixtral"
    hf_class = "MixtralForCausalLM"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096 * 32,
        "tie_word_embeddings": False,
        "rope_theta": 1e6,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "router_aux_loss_coef": 0.001,
    }

    def variant_fields(self, hf: HFConfig) -> dict[str, Any]:
        return {
            "qkv_bias": False,
            "attn_out_bias": False,
            "mlp_bias": False,
            "sliding_window": hf.get("sliding_window"),
            "n_experts": hf.require("num_local_experts"),
            "experts_per_token": hf.require("num_experts_per_tok"),
            "moe_normalize_topk": True,
            "router_aux_loss_coef": float(hf.get("router_aux_loss_coef")),
        }

    def variant_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "sliding_window": cfg.sliding_window,
            "num_local_experts": cfg.n_experts,
            "num_experts_per_tok": cfg.experts_per_token,
            "router_aux_loss_coef": cfg.router_aux_loss_coef,
        }

    def mlp_rules(self, cfg: ModelConfig, ours: str, theirs: str) -> list[Rule]:
        moe, m = theirs + "block_sparse_moe.", cfg.mlp_dim
        rules = [same(ours + "mlp.router.weight", moe + "gate.weight")]
        for e in range(cfg.n_experts or 0):
            expert, theirs_e = f"{ours}mlp.experts.{e}.", f"{moe}experts.{e}."
            gate_up = [theirs_e + "w1.weight", theirs_e + "w3.weight"]
            rules.append(stacked(expert + "fc_in.weight", gate_up, [m, m]))
            rules.append(same(expert + "fc_out.weight", theirs_e + "w2.weight"))
        return rules
