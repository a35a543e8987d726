"""Qwen2 (Yang et al., 2024): the Llama layout with biases on the query, key and value
projections (none on the output projection or the MLP).

Qwen2 can give some layers a sliding window (``use_sliding_window``, from layer
``max_window_layers`` on, or per layer in ``layer_types``). lmscope's window is one
value for every layer, so a checkpoint whose layers differ is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.io.hf.family import HFConfig, register
from lmscope.io.hf.llama import LlamaLayout


@register
class Qwen2(LlamaLayout):
    """``Qwen2ForCausalLM``."""

    model_type = "qwen2"
    hf_class = "Qwen2ForCausalLM"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "max_window_layers": 28,
    }

    def variant_fields(self, hf: HFConfig) -> dict[str, Any]:
        window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
        n_layers = hf.require("num_hidden_layers")
        first_sliding = hf.get("max_window_layers")
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
            for i in range(n_layers)
        ]
        if set(layer_types) == {"full_attention"}:
            window = None
        elif set(layer_types) != {"sliding_attention"} or window is None:
            raise hf.refuse(
                "layer_types",
                layer_types,
                "lmscope uses one attention window for every layer: all full_attention, "
                "or all sliding_attention with a sliding_window",
            )
        return {
            "qkv_bias": True,
            "attn_out_bias": False,
            "mlp_bias": False,
            "sliding_window": window,
        }

    def variant_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        sliding = cfg.sliding_window is not None
        return {
            "use_sliding_window": sliding,
            "sliding_window": cfg.sliding_window,
            "max_window_layers": 0 if sliding else cfg.n_layers,
            "layer_types": [
                "sliding_attention" if sliding else "full_attention" for _ in range(cfg.n_layers)
            ],
        }
