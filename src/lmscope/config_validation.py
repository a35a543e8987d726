"""Validation of `ModelConfig`: types, values and combinations of fields.

Every rule raises a `ConfigError` naming the field, the value and what is allowed, so a
bad config is rejected at construction with a message the user can act on.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import TYPE_CHECKING, Any, Literal

from lmscope.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from lmscope.config import ModelConfig


def require(
    ok: bool, field_name: str, value: object, allowed: str, owner: str = "ModelConfig"
) -> None:
    """Raise a `ConfigError` for `owner.field_name` unless `ok`."""
    if not ok:
        raise ConfigError(field_name, value, allowed, owner=owner)


def _type_ok(value: object, tp: Any) -> tuple[bool, list[str]]:
    """Whether `value` matches annotation `tp`; also returns literal choices seen."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        return value in typing.get_args(tp), choices
    if origin in (typing.Union, types.UnionType):
        choices: list[str] = []
        for arg in typing.get_args(tp):
            ok, more = _type_ok(value, arg)
            if ok:
                return True, []
            choices += more
        return False, choices
    if tp is type(None):
        return value is None, []
    if tp is bool:
        return isinstance(value, bool), []
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), []
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool), []
    if tp is str:
        return isinstance(value, str), []
    return True, []


def type_name(tp: Any) -> str:
    """A readable name of an annotation: ``'pre' | 'post'``, ``int | null``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def field_types(cls: type) -> dict[str, Any]:
    """Evaluated annotations of a dataclass's fields.

    Not `typing.get_type_hints`: it returns nothing for a class marked
    ``@typing.no_type_check``, which `ModelConfig` is.
    """
    return inspect.get_annotations(cls, eval_str=True)


def check_types(cfg: Any) -> None:
    """Check every field of a config dataclass against its annotation (with did-you-mean)."""
    hints = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ok, choices = _type_ok(value, hints[f.name])
        if not ok:
            hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
            allowed = f"allowed: {type_name(hints[f.name])}."
            raise ConfigError(f.name, value, allowed, hint, owner=type(cfg).__name__)


def validate(c: ModelConfig) -> None:
    """Reject invalid combinations with a message naming field, value and what is allowed."""
    for name in ("n_kv_heads", "d_head", "n_decoder_layers"):
        value = getattr(c, name)
        require(value is None or value >= 1, name, value, "must be >= 1.")
    require(c.mlp_dim >= 1, "d_mlp", c.d_mlp, "must be >= 1.")
    require(
        c.n_heads % c.kv_heads == 0,
        "n_kv_heads",
        c.n_kv_heads,
        f"n_heads={c.n_heads} must be a multiple of n_kv_heads (each key/value head serves "
        "a whole group of query heads); use a divisor of n_heads.",
    )
    require(c.n_token_types >= 0, "n_token_types", c.n_token_types, "must be >= 0.")
    require(c.norm_eps > 0, "norm_eps", c.norm_eps, "must be > 0.")
    require(0.0 <= c.dropout < 1.0, "dropout", c.dropout, "must be in [0, 1).")
    require(c.init_std > 0, "init_std", c.init_std, "must be > 0.")
    require(c.embed_scale > 0, "embed_scale", c.embed_scale, "must be > 0.")
    require(c.unembed_scale > 0, "unembed_scale", c.unembed_scale, "must be > 0.")
    require(
        c.norm_weight_offset == 0 or c.norm == "rmsnorm",
        "norm_weight_offset",
        c.norm_weight_offset,
        f"only applies to norm='rmsnorm' (norm is {c.norm!r}); use 0.",
    )
    require(
        c.norm_affine or c.norm_weight_offset == 0,
        "norm_weight_offset",
        c.norm_weight_offset,
        "offsets the norm's learned weight, and norm_affine=false norms have none; use 0.",
    )
    if isinstance(c.attention_scale, float | int):
        require(c.attention_scale > 0, "attention_scale", c.attention_scale, "must be > 0.")
    if c.sliding_window is not None:
        require(c.sliding_window >= 1, "sliding_window", c.sliding_window, "must be >= 1.")
    if c.architecture != "encoder-decoder":
        require(
            c.n_decoder_layers is None,
            "n_decoder_layers",
            c.n_decoder_layers,
            "only applies to architecture='encoder-decoder'; remove it.",
        )
    if c.architecture == "encoder-decoder":
        require(
            c.positional != "alibi",
            "positional",
            c.positional,
            "ALiBi is defined for self-attention only and an encoder-decoder also has "
            "cross attention; use t5-bias, rope or an absolute scheme.",
        )
    require(
        c.architecture == "encoder" or not c.mlm_head,
        "mlm_head",
        c.mlm_head,
        "a masked-LM head is only built for architecture='encoder'.",
    )
    # positions
    if c.positional == "rope":
        require(
            0.0 < c.rotary_fraction <= 1.0,
            "rotary_fraction",
            c.rotary_fraction,
            "must be in (0, 1].",
        )
        require(
            abs(c.head_dim * c.rotary_fraction - c.rotary_dim) < 1e-6
            and c.rotary_dim >= 2
            and c.rotary_dim % 2 == 0,
            "rotary_fraction",
            c.rotary_fraction,
            f"rotates {c.head_dim} * {c.rotary_fraction} = {c.head_dim * c.rotary_fraction:g} "
            "dims; RoPE rotates pairs, so this must be an even whole number >= 2.",
        )
        require(c.rope_theta > 0, "rope_theta", c.rope_theta, "must be > 0.")
        if c.rope_scaling != "none":
            require(
                c.rope_scaling_factor >= 1.0,
                "rope_scaling_factor",
                c.rope_scaling_factor,
                f"rope_scaling={c.rope_scaling!r} needs a factor >= 1.",
            )
        if c.rope_scaling in ("ntk", "dynamic"):
            require(
                c.rotary_dim >= 4,
                "rope_scaling",
                c.rope_scaling,
                f"NTK scaling raises the base to a power d/(d-2) with d = rotary_dim = "
                f"{c.rotary_dim}; it needs rotary_dim >= 4.",
            )
        if c.rope_scaling == "llama3":
            require(
                c.rope_high_freq_factor > c.rope_low_freq_factor,
                "rope_high_freq_factor",
                c.rope_high_freq_factor,
                f"must be greater than rope_low_freq_factor={c.rope_low_freq_factor}.",
            )
    else:
        require(
            c.rope_scaling == "none",
            "rope_scaling",
            c.rope_scaling,
            f"only applies to positional='rope' (positional is {c.positional!r}).",
        )
    if c.positional == "relative":
        require(
            c.relative_max_distance >= 1,
            "relative_max_distance",
            c.relative_max_distance,
            "must be >= 1.",
        )
    if c.positional == "t5-bias":
        require(
            c.t5_num_buckets >= 4 and c.t5_num_buckets % 2 == 0,
            "t5_num_buckets",
            c.t5_num_buckets,
            "must be an even number >= 4 (half the buckets per direction when bidirectional).",
        )
        require(
            c.t5_max_distance > c.t5_num_buckets // 2,
            "t5_max_distance",
            c.t5_max_distance,
            f"must exceed t5_num_buckets // 2 = {c.t5_num_buckets // 2}.",
        )
    # norms, blocks, MLPs
    if c.parallel_attn_mlp:
        require(
            c.norm_placement == "pre",
            "parallel_attn_mlp",
            c.parallel_attn_mlp,
            "parallel blocks read one normalised input; they need norm_placement='pre'.",
        )
    require(
        c.parallel_attn_mlp or not c.parallel_shared_norm,
        "parallel_shared_norm",
        c.parallel_shared_norm,
        "only applies when parallel_attn_mlp is true.",
    )
    if c.attn_only:
        require(not c.is_moe, "n_experts", c.n_experts, "attn_only models have no MLPs.")
        require(
            not c.parallel_attn_mlp,
            "parallel_attn_mlp",
            c.parallel_attn_mlp,
            "attn_only models have no MLP to run in parallel.",
        )
    if c.is_moe:
        assert c.n_experts is not None
        require(c.n_experts >= 1, "n_experts", c.n_experts, "must be >= 1 (or null).")
        require(
            1 <= c.experts_per_token <= c.n_experts,
            "experts_per_token",
            c.experts_per_token,
            f"must be between 1 and n_experts={c.n_experts}.",
        )
