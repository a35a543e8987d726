"""Mistral 7B (Jiang et al., 2023): the Llama layout with grouped-query attention and a
sliding attention window (each query sees at most ``sliding_window`` recent keys).

Hugging Face's window keeps keys with ``q - k < sliding_window``, lmscope's
``sliding_window`` the same; no biases anywhere.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HFConfig, register
from lmscope.io.hf.llama import LlamaLayout


@register
class Mistral(LlamaLayout):
    """``MistralForCausalLM``."""

    model_type = "mistral"
    hf_class = "MistralForCausalLM"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096 * 32,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
    }

    def variant_fields(self, hf: HFConfig) -> dict[str, Any]:
        # An absent key means Hugging Face's default window (4096); null means none.
        window = hf.data.get("sliding_window", 4096)
        return {
            "qkv_bias": False,
            "attn_out_bias": False,
            "mlp_bias": False,
            "sliding_window": window,
        }

    def variant_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"sliding_window": cfg.sliding_window}
