"""The transformer, one concept per module, in data-flow order.

`embedding` -> `position` -> `norm` -> `attention` (with `masking`, `kv_cache`) ->
`mlp` / `moe` -> `block` -> `transformer` (decoder-only, encoder-only) /
`encoder_decoder`. `build_model(cfg)` picks the class for ``cfg.architecture``;
`processing` rewrites a built model's weights (TransformerLens' weight processing).
"""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.model.attention import Attention
from lmscope.model.base import BaseTransformer
from lmscope.model.block import Block
from lmscope.model.encoder_decoder import EncoderDecoder
from lmscope.model.kv_cache import KVCache
from lmscope.model.mlp import MLP
from lmscope.model.moe import MoE
from lmscope.model.norm import LayerNorm, RMSNorm
from lmscope.model.processing import (
    center_unembed,
    center_writing_weights,
    fold_ln,
    fold_value_biases,
    process_weights,
)
from lmscope.model.transformer import Transformer

#: Model class of each architecture.
ARCHITECTURES: dict[str, type[BaseTransformer]] = {
    "decoder": Transformer,
    "encoder": Transformer,
    "encoder-decoder": EncoderDecoder,
}


def build_model(
    cfg: ModelConfig | str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> BaseTransformer:
    """A freshly initialised model for `cfg` (a `ModelConfig` or a preset name)."""
    if isinstance(cfg, str):
        cfg = ModelConfig.from_preset(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    model = ARCHITECTURES[cfg.architecture](cfg)
    return model.to(device=device, dtype=dtype)


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "Attention",
    "BaseTransformer",
    "Block",
    "EncoderDecoder",
    "KVCache",
    "LayerNorm",
    "MoE",
    "RMSNorm",
    "Transformer",
    "build_model",
    "center_unembed",
    "center_writing_weights",
    "fold_ln",
    "fold_value_biases",
    "process_weights",
]
