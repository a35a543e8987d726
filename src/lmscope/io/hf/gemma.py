"""Gemma (Gemma Team, 2024): the Llama layout with three numerical twists.

- Token embeddings are multiplied by ``sqrt(d_model)``, rounded to the model dtype
  first (``embed_scale``).
- RMSNorm scales by ``1 + w``: checkpoints store ``w - 1`` (``norm_weight_offset=1``),
  and the product runs in float32 before the cast back.
- GeGLU with the tanh approximation. Hugging Face maps a legacy ``hidden_act="gelu"``
  in Gemma configs to the tanh approximation too, and so does lmscope.

The head is tied to the embedding; ``head_dim`` is set explicitly (256 in the 7B).
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HFConfig, register
from lmscope.io.hf.llama import LlamaLayout


@register
class Gemma(LlamaLayout):
    """``GemmaForCausalLM`` (Gemma 1; Gemma 2 and 3 are other model types)."""

    model_type = "gemma"
    hf_class = "GemmaForCausalLM"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "head_dim": 256,
    }

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        if hf.get("hidden_act") == "gelu":  # as transformers' GemmaConfig does
            hf = HFConfig({**hf.data, "hidden_act": "gelu_pytorch_tanh"}, self, hf.source)
        return super().fields(hf, names)

    def variant_fields(self, hf: HFConfig) -> dict[str, Any]:
        if hf.get("use_bidirectional_attention"):
            raise hf.refuse("use_bidirectional_attention", True, "only causal Gemma is implemented")
        attention_bias = bool(hf.get("attention_bias", False))
        return {
            "qkv_bias": attention_bias,
            "attn_out_bias": attention_bias,
            "mlp_bias": False,
            "embed_scale": float(hf.require("hidden_size")) ** 0.5,
            "norm_weight_offset": 1.0,
        }

    def variant_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"attention_bias": cfg.qkv_bias}
