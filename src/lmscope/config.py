"""`ModelConfig`: the single source of truth for the shape and behaviour of a model.

Every behaviour of the model is a named field here; the model code only reads the
config. Fields that default to ``None`` are derived from others in ``__post_init__``
(``d_head = d_model // n_heads`` ...) and stored resolved, so ``config.json`` shows
the values the model really uses and JSON round-trips exactly. Quantities that are pure
functions of the fields (``rotary_dim``, ``is_gated``...) are properties.

Each field's help text is written once, in its metadata, and reused by the CLI, the
README's config table and ``lmscope info``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmscope.errors import ConfigError, did_you_mean

Architecture = Literal["decoder", "encoder", "encoder-decoder"]
Positional = Literal[
    "none", "sinusoidal", "sinusoidal-concat", "learned", "relative", "t5-bias", "rope", "alibi"
]
RopeScaling = Literal["none", "linear", "ntk", "yarn", "llama3"]
RopeLayout = Literal["rotate-half", "interleaved"]
Norm = Literal["layernorm", "rmsnorm", "none"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]
AttnImpl = Literal["auto", "sdpa", "explicit"]

#: Activations that gate the MLP (GLU family): act(x W_gate) * (x W_in).
GATED_ACTIVATIONS = frozenset({"swiglu", "geglu", "geglu_tanh", "reglu"})
#: Positional schemes that add a vector to the token embedding.
ADDITIVE_POSITIONAL = frozenset({"sinusoidal", "sinusoidal-concat", "learned"})


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text (shown by --help, the README and `info`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and behaviour of a transformer: one config describes any model lmscope builds."""

    # --- identity and overall shape ---------------------------------------------------
    name: str | None = _f(None, "Preset or model name (informative only).")
    architecture: Architecture = _f(
        "decoder", "decoder (GPT), encoder (BERT) or encoder-decoder (T5)."
    )
    vocab_size: int = _f(50257, "Number of tokens in the vocabulary.")
    d_model: int = _f(768, "Width of the residual stream.")
    n_layers: int = _f(12, "Number of blocks (the encoder's, for encoder-decoder).")
    n_decoder_layers: int | None = _f(
        None, "Decoder blocks of an encoder-decoder (default: n_layers)."
    )
    n_heads: int = _f(12, "Query heads per attention layer.")
    n_kv_heads: int | None = _f(
        None, "Key/value heads: n_heads = MHA, 1 = MQA, in between = GQA (default: n_heads)."
    )
    d_head: int | None = _f(None, "Width of one head (default: d_model // n_heads).")
    d_mlp: int | None = _f(None, "Hidden width of the MLP (default: 4 * d_model).")
    max_seq_len: int = _f(1024, "Longest sequence (learned positions, KV cache size).")
    # --- positions -------------------------------------------------------------------
    positional: Positional = _f(
        "learned",
        "Position scheme: none, sinusoidal (interleaved sin/cos), sinusoidal-concat, "
        "learned, relative (Shaw), t5-bias, rope, alibi.",
    )
    rope_theta: float = _f(10000.0, "RoPE base: frequencies are theta^(-2i/rotary_dim).")
    rope_layout: RopeLayout = _f(
        "rotate-half",
        "Which dims RoPE pairs: rotate-half (NeoX/Llama: i with i+d/2) or "
        "interleaved (GPT-J/paper: 2i with 2i+1).",
    )
    rotary_fraction: float = _f(1.0, "Fraction of each head's dims that RoPE rotates.")
    rope_scaling: RopeScaling = _f(
        "none", "RoPE context extension: none, linear, ntk, yarn or llama3."
    )
    rope_scaling_factor: float = _f(1.0, "Context extension factor of rope_scaling.")
    rope_original_max_seq_len: int | None = _f(
        None, "Pre-training context of a scaled RoPE (yarn, llama3; default: max_seq_len)."
    )
    rope_low_freq_factor: float = _f(1.0, "llama3 scaling: low-frequency wavelength factor.")
    rope_high_freq_factor: float = _f(4.0, "llama3 scaling: high-frequency wavelength factor.")
    rope_yarn_beta_fast: float = _f(32.0, "YaRN: rotations above which dims are not scaled.")
    rope_yarn_beta_slow: float = _f(1.0, "YaRN: rotations below which dims are fully scaled.")
    relative_max_distance: int = _f(
        16, "relative: distances beyond this share one embedding (Shaw et al. clipping)."
    )
    t5_num_buckets: int = _f(32, "t5-bias: number of relative-position buckets.")
    t5_max_distance: int = _f(128, "t5-bias: distance at which the last bucket starts.")
    # --- normalisation and MLP -------------------------------------------------------
    norm: Norm = _f("layernorm", "layernorm, rmsnorm or none (identity).")
    norm_placement: NormPlacement = _f(
        "pre", "pre: x + f(norm(x)) (GPT-2); post: norm(x + f(x)) (original, BERT)."
    )
    norm_eps: float = _f(1e-5, "Epsilon added to the variance in norms.")
    final_norm: bool | None = _f(
        None, "Norm after the last block (default: true for pre-norm, false for post-norm)."
    )
    activation: Activation = _f(
        "gelu",
        "MLP non-linearity: relu, gelu, gelu_tanh, silu, or gated swiglu, geglu, "
        "geglu_tanh, reglu.",
    )
    attn_only: bool = _f(False, "Blocks without MLPs (attention-only toy models).")
    n_experts: int | None = _f(None, "Mixture of experts: experts per MLP (None = dense).")
    experts_per_token: int = _f(2, "Mixture of experts: experts each token is routed to.")
    moe_normalize_topk: bool = _f(
        True, "Renormalise the chosen experts' router probabilities to sum to 1 (Mixtral)."
    )
    router_aux_loss_coef: float = _f(0.01, "Weight of the load-balancing auxiliary loss.")
    # --- block wiring ----------------------------------------------------------------
    parallel_attn_mlp: bool = _f(
        False, "Parallel block x + attn(ln(x)) + mlp(ln(x)) (GPT-J, NeoX)."
    )
    parallel_shared_norm: bool = _f(
        False, "Parallel block: attention and MLP read one shared norm (GPT-J)."
    )
    qkv_bias: bool = _f(True, "Bias on the query, key and value projections.")
    attn_out_bias: bool = _f(True, "Bias on the attention output projection.")
    mlp_bias: bool = _f(True, "Biases in the MLP.")
    norm_bias: bool = _f(True, "LayerNorm has a learned shift (beta).")
    unembed_bias: bool = _f(False, "Bias on the unembedding (LM head).")
    dropout: float = _f(0.0, "Dropout on embeddings, attention pattern and block outputs.")
    tie_embeddings: bool = _f(True, "Unembedding is the transpose of the token embedding.")
    n_token_types: int = _f(0, "Segment (token type) embeddings, as BERT's 2 (0 = none).")
    embedding_norm: bool = _f(False, "Normalise the summed embeddings (BERT).")
    mlm_head: bool = _f(False, "Encoder: add a masked-LM head (dense, act, norm, unembed).")
    # --- attention -------------------------------------------------------------------
    attention_scale: float | Literal["none"] | None = _f(
        None, "Multiplier on QK^T: default 1/sqrt(d_head), 'none' = 1, or a number."
    )
    sliding_window: int | None = _f(
        None, "Each query sees at most this many most recent keys (Mistral)."
    )
    causal: bool | None = _f(
        None, "Queries see only earlier keys (default: true except for encoders)."
    )
    attn_impl: AttnImpl = _f(
        "auto",
        "auto: fused SDPA unless a hook needs scores/pattern; sdpa; explicit (always "
        "materialise scores and pattern).",
    )
    init_std: float = _f(0.02, "Standard deviation of the normal weight initialisation.")

    def __post_init__(self) -> None:
        _check_types(self)
        derived = {
            "n_kv_heads": self.n_heads,
            "d_mlp": 4 * self.d_model,
            "final_norm": self.norm_placement == "pre",
            "causal": self.architecture != "encoder",
        }
        if self.positional == "rope":
            derived["rope_original_max_seq_len"] = self.max_seq_len
        if self.architecture == "encoder-decoder":
            derived["n_decoder_layers"] = self.n_layers
        if self.d_head is None:
            _require(
                self.d_model % self.n_heads == 0,
                "d_model",
                self.d_model,
                f"must be divisible by n_heads={self.n_heads} (or set d_head explicitly).",
            )
            derived["d_head"] = self.d_model // self.n_heads
        filled = [name for name in derived if getattr(self, name) is None]
        for name in filled:
            object.__setattr__(self, name, derived[name])
        # Remembered (not a field: not in JSON or ==) so replace() can re-derive them.
        object.__setattr__(self, "_derived", frozenset(filled))
        _validate(self)

    # --- derived quantities ----------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Resolved width of one head (``d_head`` after defaults)."""
        assert self.d_head is not None  # resolved in __post_init__
        return self.d_head

    @property
    def kv_heads(self) -> int:
        """Resolved number of key/value heads."""
        assert self.n_kv_heads is not None
        return self.n_kv_heads

    @property
    def mlp_dim(self) -> int:
        """Resolved MLP hidden width."""
        assert self.d_mlp is not None
        return self.d_mlp

    @property
    def is_causal(self) -> bool:
        """Whether self-attention is causal (resolved ``causal``)."""
        return bool(self.causal)

    @property
    def is_gated(self) -> bool:
        """Whether the MLP is a GLU (gate times linear)."""
        return self.activation in GATED_ACTIVATIONS

    @property
    def is_moe(self) -> bool:
        """Whether MLPs are mixtures of experts."""
        return self.n_experts is not None

    @property
    def rotary_dim(self) -> int:
        """Number of dims of each head that RoPE rotates (0 without RoPE)."""
        if self.positional != "rope":
            return 0
        return round(self.head_dim * self.rotary_fraction)

    @property
    def scale(self) -> float:
        """The multiplier applied to QK^T."""
        if self.attention_scale is None:
            return 1.0 / math.sqrt(self.head_dim)
        if self.attention_scale == "none":
            return 1.0
        return float(self.attention_scale)

    @property
    def decoder_layers(self) -> int:
        """Decoder blocks of an encoder-decoder, else 0."""
        return self.n_decoder_layers or 0

    # --- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the config; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are rejected with a did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(key, data[key], "no such field.", did_you_mean(key, known))
        return cls(**data)

    @classmethod
    def from_json(cls, source: str | Path) -> ModelConfig:
        """Build from a JSON file path or a JSON string."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("<json>", str(source)[:60], f"not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ConfigError("<json>", type(data).__name__, "expected a JSON object.")
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see `lmscope.presets`), with field overrides."""
        from lmscope.presets import preset_dict

        return cls.from_dict({**preset_dict(name), **overrides})

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied and validated.

        Fields that were derived (``d_head`` from ``d_model // n_heads``...) are derived
        again from the new values unless `changes` sets them.
        """
        data = self.to_dict()
        for name in getattr(self, "_derived", ()):
            data[name] = None
        return self.from_dict({**data, **changes})


def field_help() -> dict[str, str]:
    """Help text of every `ModelConfig` field, in declaration order."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(ModelConfig)}


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _require(ok: bool, field_name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, allowed)


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


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_types(cfg: ModelConfig) -> None:
    hints = typing.get_type_hints(ModelConfig, globalns=globals())
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ok, choices = _type_ok(value, hints[f.name])
        if not ok:
            hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
            raise ConfigError(f.name, value, f"allowed: {_type_name(hints[f.name])}.", hint)


def _validate(c: ModelConfig) -> None:
    """Reject invalid combinations with a message naming field, value and what is allowed."""
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
        _require(getattr(c, name) >= 1, name, getattr(c, name), "must be >= 1.")
    for name in ("n_kv_heads", "d_head", "n_decoder_layers"):
        value = getattr(c, name)
        _require(value is None or value >= 1, name, value, "must be >= 1.")
    _require(c.mlp_dim >= 1, "d_mlp", c.d_mlp, "must be >= 1.")
    _require(
        c.n_heads % c.kv_heads == 0,
        "n_kv_heads",
        c.n_kv_heads,
        f"n_heads={c.n_heads} must be a multiple of n_kv_heads (each key/value head serves "
        "a whole group of query heads); use a divisor of n_heads.",
    )
    _require(c.n_token_types >= 0, "n_token_types", c.n_token_types, "must be >= 0.")
    _require(c.norm_eps > 0, "norm_eps", c.norm_eps, "must be > 0.")
    _require(0.0 <= c.dropout < 1.0, "dropout", c.dropout, "must be in [0, 1).")
    _require(c.init_std > 0, "init_std", c.init_std, "must be > 0.")
    if isinstance(c.attention_scale, float | int):
        _require(c.attention_scale > 0, "attention_scale", c.attention_scale, "must be > 0.")
    if c.sliding_window is not None:
        _require(c.sliding_window >= 1, "sliding_window", c.sliding_window, "must be >= 1.")
    if c.architecture != "encoder-decoder":
        _require(
            c.n_decoder_layers is None,
            "n_decoder_layers",
            c.n_decoder_layers,
            "only applies to architecture='encoder-decoder'; remove it.",
        )
    if c.architecture == "encoder-decoder":
        _require(
            c.positional != "alibi",
            "positional",
            c.positional,
            "ALiBi is defined for self-attention only and an encoder-decoder also has "
            "cross attention; use t5-bias, rope or an absolute scheme.",
        )
    _require(
        c.architecture == "encoder" or not c.mlm_head,
        "mlm_head",
        c.mlm_head,
        "a masked-LM head is only built for architecture='encoder'.",
    )
    # positions
    if c.positional == "rope":
        _require(
            0.0 < c.rotary_fraction <= 1.0,
            "rotary_fraction",
            c.rotary_fraction,
            "must be in (0, 1].",
        )
        _require(
            c.rotary_dim >= 2 and c.rotary_dim % 2 == 0,
            "rotary_fraction",
            c.rotary_fraction,
            f"rotates {c.head_dim} * {c.rotary_fraction} = {c.head_dim * c.rotary_fraction:g} "
            "dims; RoPE rotates pairs, so this must be an even whole number >= 2.",
        )
        _require(c.rope_theta > 0, "rope_theta", c.rope_theta, "must be > 0.")
        if c.rope_scaling != "none":
            _require(
                c.rope_scaling_factor >= 1.0,
                "rope_scaling_factor",
                c.rope_scaling_factor,
                f"rope_scaling={c.rope_scaling!r} needs a factor >= 1.",
            )
        if c.rope_scaling == "llama3":
            _require(
                c.rope_high_freq_factor > c.rope_low_freq_factor,
                "rope_high_freq_factor",
                c.rope_high_freq_factor,
                f"must be greater than rope_low_freq_factor={c.rope_low_freq_factor}.",
            )
    else:
        _require(
            c.rope_scaling == "none",
            "rope_scaling",
            c.rope_scaling,
            f"only applies to positional='rope' (positional is {c.positional!r}).",
        )
    if c.positional == "relative":
        _require(
            c.relative_max_distance >= 1,
            "relative_max_distance",
            c.relative_max_distance,
            "must be >= 1.",
        )
    if c.positional == "t5-bias":
        _require(
            c.t5_num_buckets >= 4 and c.t5_num_buckets % 2 == 0,
            "t5_num_buckets",
            c.t5_num_buckets,
            "must be an even number >= 4 (half the buckets per direction when bidirectional).",
        )
        _require(
            c.t5_max_distance > c.t5_num_buckets // 2,
            "t5_max_distance",
            c.t5_max_distance,
            f"must exceed t5_num_buckets // 2 = {c.t5_num_buckets // 2}.",
        )
    # norms, blocks, MLPs
    if c.parallel_attn_mlp:
        _require(
            c.norm_placement == "pre",
            "parallel_attn_mlp",
            c.parallel_attn_mlp,
            "parallel blocks read one normalised input; they need norm_placement='pre'.",
        )
    _require(
        c.parallel_attn_mlp or not c.parallel_shared_norm,
        "parallel_shared_norm",
        c.parallel_shared_norm,
        "only applies when parallel_attn_mlp is true.",
    )
    if c.attn_only:
        _require(not c.is_moe, "n_experts", c.n_experts, "attn_only models have no MLPs.")
        _require(
            not c.parallel_attn_mlp,
            "parallel_attn_mlp",
            c.parallel_attn_mlp,
            "attn_only models have no MLP to run in parallel.",
        )
    if c.is_moe:
        assert c.n_experts is not None
        _require(c.n_experts >= 1, "n_experts", c.n_experts, "must be >= 1 (or null).")
        _require(
            1 <= c.experts_per_token <= c.n_experts,
            "experts_per_token",
            c.experts_per_token,
            f"must be between 1 and n_experts={c.n_experts}.",
        )
