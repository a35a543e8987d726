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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmscope.config_validation import check_types, field_types, require, type_name, validate
from lmscope.errors import ConfigError, did_you_mean

Architecture = Literal["decoder", "encoder", "encoder-decoder"]
Positional = Literal[
    "none", "sinusoidal", "sinusoidal-concat", "learned", "relative", "t5-bias", "rope", "alibi"
]
RopeScaling = Literal["none", "linear", "ntk", "dynamic", "yarn", "llama3"]
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


# no_type_check: the config checks its own field types (with better messages); this keeps
# the test suite's runtime type checker from pre-empting them.
@typing.no_type_check
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
        "none",
        "RoPE context extension: none, linear, ntk, dynamic (NTK by input length), yarn or llama3.",
    )
    rope_scaling_factor: float = _f(1.0, "Context extension factor of rope_scaling.")
    rope_original_max_seq_len: int | None = _f(
        None,
        "Pre-training context of a scaled RoPE (dynamic, yarn, llama3; default: max_seq_len).",
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
    norm_weight_offset: float = _f(
        0.0, "RMSNorm scales by (offset + weight); Gemma stores weights as w - 1 (offset 1)."
    )
    norm_affine: bool = _f(
        True,
        "Norms learn a scale (and shift); false: they only normalise, as after fold_ln "
        "(TransformerLens' LNPre / RMSPre).",
    )
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
    unembed_scale: float = _f(
        1.0, "Multiplier on the final hidden state before the unembedding (T5 tied: d^-0.5)."
    )
    dropout: float = _f(0.0, "Dropout on embeddings, attention pattern and block outputs.")
    tie_embeddings: bool = _f(True, "Unembedding is the transpose of the token embedding.")
    n_token_types: int = _f(0, "Segment (token type) embeddings, as BERT's 2 (0 = none).")
    embedding_norm: bool = _f(False, "Normalise the summed embeddings (BERT).")
    embed_scale: float = _f(
        1.0, "Multiplier on token embeddings, rounded to the model dtype (Gemma: sqrt(d_model))."
    )
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
        check_types(self)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1.")
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
            require(
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
        validate(self)

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
        """All fields as plain JSON-able values; derived fields as None.

        Writing a derived field (``d_head`` from ``d_model // n_heads``...) as None keeps
        it derived after a round trip, so editing ``d_model`` in a saved ``config.json``
        or calling `replace` re-derives it. The resolved values are on the object.
        """
        data = dataclasses.asdict(self)
        for name in getattr(self, "_derived", ()):
            data[name] = None
        return data

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
        """Build from a JSON file (a `Path` or the name of an existing file) or JSON text."""
        where = "JSON text"
        text = str(source)
        if isinstance(source, Path) or _is_file(text):
            where = str(source)
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise ConfigError.about(where, f"cannot be read ({exc}).") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError.about(where, f"is not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ConfigError.about(
                where, f"holds a JSON {type(data).__name__}; expected a JSON object of fields."
            )
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
        return self.from_dict({**self.to_dict(), **changes})


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long or not a path at all
        return False


def field_help() -> dict[str, str]:
    """Help text of every `ModelConfig` field, in declaration order."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(ModelConfig)}


def config_table_markdown() -> str:
    """The README's table of every `ModelConfig` field: name, type, default, meaning."""
    hints = field_types(ModelConfig)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(ModelConfig):
        kind = type_name(hints[f.name]).replace("|", "\\|")
        rows.append(f"| `{f.name}` | {kind} | `{f.default!r}` | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
