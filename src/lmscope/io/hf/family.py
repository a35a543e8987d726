"""What a Hugging Face model family is to lmscope: a config mapping and a weight mapping.

Each family is one small module (``gpt2.py``, ``llama.py``...) with a `Family` subclass
registered by its ``model_type``. A family says three things:

- `Family.fields`: the `ModelConfig` fields of a Hugging Face ``config.json`` (together
  with ``fixed``, what the architecture always is). Options that change the computation
  and that lmscope does not implement are refused here, never approximated.
- `Family.to_hf`: the inverse, the ``config.json`` keys of a `ModelConfig`.
- `Family.rules`: how each lmscope tensor is made from checkpoint tensors (`rules.Rule`).

Export refuses configs the family cannot express by mapping its own output back: the
config read from the written ``config.json`` must equal the model's (`check_lossless`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError, ConfigError
from lmscope.io.hf.rules import Rule


class UnsupportedCheckpointError(CheckpointError):
    """A model type, or an option of one, that lmscope does not implement."""


#: Hugging Face activation names -> lmscope's, for plain and gated MLPs. Names not here
#: (gelu_fast, quick_gelu, ...) compute something else and are refused.
PLAIN_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
GATED_ACTIVATIONS = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_new": "geglu_tanh",
    "gelu_pytorch_tanh": "geglu_tanh",
    "relu": "reglu",
}
#: lmscope activation -> the Hugging Face name written on export.
HF_ACTIVATION = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swiglu": "silu",
    "geglu": "gelu",
    "geglu_tanh": "gelu_pytorch_tanh",
    "reglu": "relu",
}

#: Fields compared by `check_lossless` are all but these (run-time or training choices).
NOT_ARCHITECTURE = frozenset({"name", "dropout", "attn_impl", "init_std", "router_aux_loss_coef"})


class HFConfig:
    """A Hugging Face ``config.json``, read with the family's defaults for absent keys."""

    def __init__(
        self,
        data: dict[str, Any],
        family: Family,
        source: str = "config.json",
        name: str | None = None,
    ) -> None:
        self.data = data
        self.family = family
        self.source = source
        #: The model's name (the directory's, when loading).
        self.name = name

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, else the family's default, else `default`."""
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        return self.family.defaults.get(key, default)

    def require(self, key: str) -> Any:
        """The value of `key`; a clear error when it is absent."""
        value = self.get(key)
        if value is None:
            raise CheckpointError(
                f"{self.source} (model_type={self.family.model_type!r}) has no {key!r}; it "
                "is needed to build the model."
            )
        return value

    def refuse(self, key: str, value: Any, what: str) -> UnsupportedCheckpointError:
        """The error for an option lmscope does not implement (`what`: what is allowed)."""
        return UnsupportedCheckpointError(
            f"{self.source}: {self.family.model_type} option {key}={value!r} is not "
            f"implemented by lmscope ({what}); the checkpoint is refused rather than loaded "
            "approximately."
        )

    def activation(self, key: str, gated: bool) -> str:
        """The lmscope activation for the Hugging Face activation name under `key`."""
        name = self.require(key)
        table = GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS
        if name not in table:
            raise self.refuse(key, name, f"supported: {', '.join(sorted(table))}")
        return table[name]

    def rope(self, head_dim: int, max_positions: int) -> dict[str, Any]:
        """RoPE fields from ``rope_parameters`` (transformers 5) or the older keys.

        Priority as in transformers: a legacy ``rope_scaling`` dict, else
        ``rope_parameters``; ``rope_theta`` and ``partial_rotary_factor`` may also sit
        at the top level.
        """
        params = dict(self.data.get("rope_scaling") or self.data.get("rope_parameters") or {})
        kind = params.get("rope_type", params.get("type", "default"))
        params.setdefault("rope_theta", self.get("rope_theta", 10000.0))
        if "partial_rotary_factor" in self.data:
            params.setdefault("partial_rotary_factor", self.data["partial_rotary_factor"])
        if kind in ("llama3", "yarn"):
            if "original_max_position_embeddings" in self.data:
                params["original_max_position_embeddings"] = self.data[
                    "original_max_position_embeddings"
                ]
            params.setdefault("original_max_position_embeddings", max_positions)
        rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        fields: dict[str, Any] = {
            "positional": "rope",
            "rope_theta": float(params["rope_theta"]),
            "rotary_fraction": rotary_dim / head_dim,
        }
        reader = _ROPE_READERS.get(kind)
        if reader is None:
            raise self.refuse("rope_type", kind, f"supported: {', '.join(sorted(_ROPE_READERS))}")
        fields.update(reader(self, params, max_positions))
        return fields


def _rope_default(hf: HFConfig, p: dict[str, Any], max_positions: int) -> dict[str, Any]:
    return {"rope_scaling": "none"}


def _rope_linear(hf: HFConfig, p: dict[str, Any], max_positions: int) -> dict[str, Any]:
    return {"rope_scaling": "linear", "rope_scaling_factor": float(p["factor"])}


def _rope_dynamic(hf: HFConfig, p: dict[str, Any], max_positions: int) -> dict[str, Any]:
    # Hugging Face grows the base beyond max_position_embeddings (not an "original").
    return {
        "rope_scaling": "dynamic",
        "rope_scaling_factor": float(p["factor"]),
        "rope_original_max_seq_len": max_positions,
    }


def _rope_yarn(hf: HFConfig, p: dict[str, Any], max_positions: int) -> dict[str, Any]:
    original = int(p["original_max_position_embeddings"])
    factor = p.get("factor") or max_positions / original
    # lmscope implements YaRN's default temperature 0.1 ln(factor) + 1 and truncated ramp.
    default_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    attention = p.get("attention_factor")
    if attention is not None and not math.isclose(attention, default_factor, rel_tol=1e-9):
        raise hf.refuse(
            "attention_factor", attention, f"only 0.1 ln(factor) + 1 = {default_factor}"
        )
    for key in ("mscale", "mscale_all_dim"):
        if p.get(key):
            raise hf.refuse(key, p[key], "YaRN's mscale variants are not implemented")
    if p.get("truncate", True) is not True:
        raise hf.refuse("truncate", p["truncate"], "only the truncated ramp (true)")
    return {
        "rope_scaling": "yarn",
        "rope_scaling_factor": float(factor),
        "rope_original_max_seq_len": original,
        "rope_yarn_beta_fast": float(p.get("beta_fast") or 32.0),
        "rope_yarn_beta_slow": float(p.get("beta_slow") or 1.0),
    }


def _rope_llama3(hf: HFConfig, p: dict[str, Any], max_positions: int) -> dict[str, Any]:
    return {
        "rope_scaling": "llama3",
        "rope_scaling_factor": float(p["factor"]),
        "rope_original_max_seq_len": int(p["original_max_position_embeddings"]),
        "rope_low_freq_factor": float(p["low_freq_factor"]),
        "rope_high_freq_factor": float(p["high_freq_factor"]),
    }


_ROPE_READERS = {
    "default": _rope_default,
    "linear": _rope_linear,
    "dynamic": _rope_dynamic,
    "yarn": _rope_yarn,
    "llama3": _rope_llama3,
}


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """``rope_parameters`` (transformers 5 layout) of a RoPE config."""
    params: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rotary_fraction != 1.0:
        params["partial_rotary_factor"] = cfg.rotary_fraction
    if cfg.rope_scaling != "none":
        params["rope_type"] = cfg.rope_scaling
        params["factor"] = cfg.rope_scaling_factor
    if cfg.rope_scaling in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = cfg.rope_original_max_seq_len
    if cfg.rope_scaling == "yarn":
        params["beta_fast"] = cfg.rope_yarn_beta_fast
        params["beta_slow"] = cfg.rope_yarn_beta_slow
    if cfg.rope_scaling == "llama3":
        params["low_freq_factor"] = cfg.rope_low_freq_factor
        params["high_freq_factor"] = cfg.rope_high_freq_factor
    return {"rope_parameters": params}


class Family:
    """Base of the per-family adapters (see the module docstring)."""

    #: ``model_type`` in ``config.json``.
    model_type: ClassVar[str]
    #: Class name written to ``architectures`` on export (the one with the head).
    hf_class: ClassVar[str]
    #: Prefix of the base model's tensors in checkpoints with a head (``model.``).
    prefix: ClassVar[str] = ""
    #: Hugging Face config defaults, for keys a ``config.json`` leaves out.
    defaults: ClassVar[dict[str, Any]] = {}
    #: `ModelConfig` fields the architecture always has.
    fixed: ClassVar[dict[str, Any]] = {}
    #: Regexes of checkpoint tensors that hold nothing lmscope computes with (buffers
    #: saved by old versions, poolers, tied copies).
    ignored: ClassVar[tuple[str, ...]] = ()
    #: The untied head's tensor; a tied checkpoint may still store a copy, not read.
    head: ClassVar[str] = "lm_head.weight"

    def fields(self, hf: HFConfig, names: set[str]) -> dict[str, Any]:
        """`ModelConfig` fields of `hf` (`names`: the checkpoint's tensors, full names)."""
        raise NotImplementedError

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """``config.json`` keys describing `cfg`."""
        raise NotImplementedError

    def rules(self, cfg: ModelConfig) -> list[Rule]:
        """How every tensor of the lmscope model is made from checkpoint tensors."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------
    def config(self, hf: HFConfig, names: set[str]) -> ModelConfig:
        """The `ModelConfig` of a Hugging Face config (refusing what is not implemented)."""
        fields = {"name": hf.name, **self.fixed, **self.fields(hf, names)}
        try:
            return ModelConfig(**fields)
        except ConfigError as exc:
            raise UnsupportedCheckpointError(
                f"{hf.source} ({self.model_type}) describes a model lmscope cannot build: {exc}"
            ) from exc

    def hf_config(self, cfg: ModelConfig, names: set[str]) -> dict[str, Any]:
        """A ``config.json`` for `cfg`, checked to describe exactly `cfg`."""
        data = {
            "model_type": self.model_type,
            "architectures": [self.hf_class],
            **self.to_hf(cfg),
        }
        check_lossless(self, cfg, data, names)
        return data

    def headless(self, cfg: ModelConfig) -> bool:
        """Whether `cfg` is the bare base model (its tensors are written without `prefix`)."""
        return False

    def full_names(self, stored: set[str]) -> dict[str, str]:
        """Full (with-head) tensor name -> stored name: base-model checkpoints lack `prefix`."""
        if self.prefix and not any(n.startswith(self.prefix) for n in stored):
            return {self.prefix + n: n for n in stored}
        return {n: n for n in stored}


def check_lossless(family: Family, cfg: ModelConfig, data: dict[str, Any], names: set[str]) -> None:
    """Refuse an export whose ``config.json`` would not describe `cfg` exactly."""
    try:
        back = family.config(HFConfig(data, family, "the exported config"), names)
    except CheckpointError as exc:
        raise UnsupportedCheckpointError(
            f"this model cannot be written as a {family.model_type} checkpoint: {exc}"
        ) from exc
    ours, theirs = dataclasses.asdict(cfg), dataclasses.asdict(back)
    differ = [k for k in ours if k not in NOT_ARCHITECTURE and ours[k] != theirs[k]]
    if differ:
        shown = ", ".join(
            f"{k}={ours[k]!r} (as {family.model_type}: {theirs[k]!r})" for k in differ
        )
        raise UnsupportedCheckpointError(
            f"this model cannot be written as a {family.model_type} checkpoint: the "
            f"architecture has no way to express {shown}. Choose the family the model "
            "came from (--family)."
        )


#: model_type -> its adapter; filled by the family modules (`register`).
FAMILIES: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available under its ``model_type``."""
    FAMILIES[cls.model_type] = cls()
    return cls


def family_for(model_type: object, source: str = "config.json") -> Family:
    """The adapter of `model_type`; an unsupported type is refused with the list."""
    if model_type not in FAMILIES:
        raise UnsupportedCheckpointError(
            f"{source}: model_type {model_type!r} is not supported; lmscope loads "
            f"{', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[str(model_type)]


def optional(value: int, derived: int) -> int | None:
    """`value`, or None when it equals what `ModelConfig` would derive (stays derived)."""
    return None if value == derived else value
