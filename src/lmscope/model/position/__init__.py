"""Every positional scheme, as small objects the embedding step or attention calls.

Where each scheme acts:

| scheme | acts on | module |
|---|---|---|
| sinusoidal, sinusoidal-concat, learned | the embedding (added) | `absolute` |
| rope | queries and keys (rotated) | `rotary` |
| alibi, t5-bias | attention scores (per-head bias) | `bias` |
| relative (Shaw) | scores and values (per-layer tables) | `relative` |
"""

from __future__ import annotations

from torch import nn

from lmscope.config import ModelConfig
from lmscope.model.position.absolute import LearnedPositionEmbedding, SinusoidalPositionEmbedding
from lmscope.model.position.bias import ALiBi, T5RelativeBias, alibi_slopes, t5_relative_bucket
from lmscope.model.position.relative import RelativePositionEmbedding
from lmscope.model.position.rotary import RotaryEmbedding, apply_rotary, rope_frequencies


def make_position_embedding(cfg: ModelConfig) -> nn.Module | None:
    """The module that adds a position vector to the embedding, if `cfg` has one."""
    if cfg.positional == "learned":
        return LearnedPositionEmbedding(cfg.max_seq_len, cfg.d_model)
    if cfg.positional in ("sinusoidal", "sinusoidal-concat"):
        return SinusoidalPositionEmbedding(cfg.d_model, interleaved=cfg.positional == "sinusoidal")
    return None


def make_position_bias(cfg: ModelConfig, bidirectional: bool) -> nn.Module | None:
    """The score-bias module of one stack (ALiBi or T5), if `cfg` has one."""
    if cfg.positional == "alibi":
        return ALiBi(cfg.n_heads)
    if cfg.positional == "t5-bias":
        return T5RelativeBias(cfg.n_heads, cfg.t5_num_buckets, cfg.t5_max_distance, bidirectional)
    return None


def make_rotary(cfg: ModelConfig) -> RotaryEmbedding | None:
    """The RoPE module of one stack, if `cfg` uses RoPE."""
    return RotaryEmbedding(cfg) if cfg.positional == "rope" else None


__all__ = [
    "ALiBi",
    "LearnedPositionEmbedding",
    "RelativePositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEmbedding",
    "T5RelativeBias",
    "alibi_slopes",
    "apply_rotary",
    "make_position_bias",
    "make_position_embedding",
    "make_rotary",
    "rope_frequencies",
    "t5_relative_bucket",
]
