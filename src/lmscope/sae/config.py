"""`SAEConfig`: everything that defines a sparse autoencoder, its loss and where it reads.

One frozen dataclass for every variant (``arch``). Fields a variant does not use keep
their defaults and are ignored by it. Defaults that depend on the variant (``k`` is
required for TopK, ``normalize_decoder`` differs between ReLU-L1 and TopK...) are
resolved in ``__post_init__`` and stored, so ``config.json`` shows the values the SAE
really uses and a JSON round trip is exact.

Input normalisation follows SAELens's ``expected_average_only_in`` (Anthropic, April
2024): activations are multiplied by a constant ``activation_scale`` so that their mean
norm is ``sqrt(d_in)``; the SAE applies the factor to its inputs and undoes it on its
outputs, so callers always pass and receive raw activations. `SAE.fold_activation_norm_
scaling_factor` moves the factor into the weights instead.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lmscope.config_validation import check_types
from lmscope.config_validation import require as _require
from lmscope.errors import ConfigError, did_you_mean

Arch = Literal["standard", "topk", "batchtopk", "jumprelu", "gated"]
Normalization = Literal["none", "expected_average_only_in"]
SparsityLoss = Literal["step", "tanh", "quadratic"]
DType = Literal["float32", "float64", "bfloat16", "float16"]

#: Every variant, with a one-line description (CLI help, errors, docs).
ARCHS: dict[str, str] = {
    "standard": "ReLU with a decoder-norm-weighted L1 penalty (Anthropic, April 2024)",
    "topk": "TopK: exactly k latents per input, AuxK loss for dead latents (Gao et al. 2024)",
    "batchtopk": "BatchTopK: k per input on average over a batch; a threshold at inference",
    "jumprelu": "JumpReLU: learned thresholds, straight-through L0 loss (Rajamanoharan 2024)",
    "gated": "Gated: separate gate and magnitude paths (Rajamanoharan et al. 2024)",
}
#: Whether each variant keeps decoder rows at unit norm by default. ReLU-L1 instead
#: weights its penalty by the decoder norms, which removes the same degeneracy.
DECODER_UNIT_NORM: dict[str, bool] = {
    "standard": False,
    "topk": True,
    "batchtopk": True,
    "jumprelu": True,
    "gated": True,
}
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
FORMAT = "lmscope-sae"


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text."""
    return field(default=default, metadata={"help": help})


@typing.no_type_check  # check_types validates the fields with clearer messages
@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Shape, variant, loss settings and provenance of one sparse autoencoder."""

    # --- shape ---------------------------------------------------------------------
    d_in: int = _f(0, "Width of the activations the SAE reads.")
    d_sae: int | None = _f(None, "Number of latents (default: d_in * expansion_factor).")
    expansion_factor: float | None = _f(None, "Latents per input dimension (the '8x' width).")
    arch: Arch = _f("standard", "Variant: " + ", ".join(ARCHS) + ".")
    # --- transcoders: read one activation, reconstruct another ------------------------
    d_out: int | None = _f(None, "Width of the output (transcoders; default: d_in).")
    hook_name_out: str | None = _f(None, "Hook whose activation a transcoder reconstructs.")
    hook_layer_out: int | None = _f(None, "Layer of hook_name_out (informative).")
    skip_connection: bool = _f(False, "Transcoders: add a learned linear skip x @ W_skip.")
    # --- sparsity --------------------------------------------------------------------
    k: int | float | None = _f(None, "Latents per input (topk: exact; batchtopk: mean).")
    l1_coefficient: float = _f(5.0, "Weight of the L1 penalty (standard, gated).")
    aux_k: int | None = _f(None, "Dead latents in the AuxK loss (default: d_in // 2).")
    aux_k_coefficient: float = _f(1 / 32, "Weight of the AuxK loss (topk, batchtopk).")
    batchtopk_threshold_lr: float = _f(
        0.01, "batchtopk: EMA rate of the inference threshold (min active value per batch)."
    )
    jumprelu_init_threshold: float = _f(0.01, "jumprelu: initial threshold of every latent.")
    jumprelu_init_l0: float | None = _f(
        None,
        "jumprelu: set each threshold from the first batch, at the pre-activation quantile "
        "where the latent fires on init_l0 / d_sae of the inputs (L0 ~ init_l0 from the "
        "first step); None: every threshold starts at jumprelu_init_threshold.",
    )
    jumprelu_bandwidth: float = _f(0.05, "jumprelu: width epsilon of the rectangle kernel.")
    jumprelu_threshold_lr_scale: float = _f(
        1.0,
        "jumprelu: the thresholds' learning rate as a multiple of the trainer's (Adam moves a "
        "threshold by about its rate per step; thresholds are pre-activation sized, ~1-3).",
    )
    jumprelu_sparsity_loss: SparsityLoss = _f(
        "step",
        "jumprelu: L0 estimate: step (straight-through, DeepMind), tanh (Anthropic), "
        "quadratic (around target_l0).",
    )
    jumprelu_tanh_scale: float = _f(4.0, "jumprelu tanh loss: tanh(scale * act * |W_dec|).")
    l0_coefficient: float = _f(1.0, "jumprelu: weight of the L0 sparsity loss.")
    target_l0: float | None = _f(None, "jumprelu quadratic loss: the L0 it pulls towards.")
    pre_act_loss_coefficient: float = _f(
        0.0,
        "jumprelu: weight of Anthropic's pre-activation loss, sum_j relu(theta_j - pre_j) * "
        "|W_dec_j|, which pulls latents that are off towards their threshold (0: off; "
        "Anthropic, January 2025, used 3e-6).",
    )
    pre_act_loss_dead_only: bool = _f(
        True,
        "jumprelu: the pre-activation loss covers dead latents only (SAELens), else every "
        "latent (Anthropic).",
    )
    # --- weights ---------------------------------------------------------------------
    normalize_decoder: bool | None = _f(
        None, "Keep decoder rows at unit norm (default: all variants but standard)."
    )
    decoder_init_norm: float = _f(
        0.1, "Initial norm of decoder rows when they are not kept at unit norm."
    )
    apply_b_dec_to_input: bool | None = _f(
        None, "Subtract b_dec from the input before encoding (default: yes, no for transcoders)."
    )
    dtype: DType = _f("float32", "Parameter dtype.")
    # --- input normalisation -----------------------------------------------------------
    normalize_activations: Normalization = _f(
        "none", "none, or expected_average_only_in: inputs times activation_scale."
    )
    activation_scale: float | None = _f(
        None, "Factor making the mean input norm sqrt(d_in) (estimated if unset)."
    )
    activation_scale_out: float | None = _f(
        None, "Transcoders: the same factor for the output activation."
    )
    # --- provenance ------------------------------------------------------------------
    hook_name: str | None = _f(None, "Hook point the SAE reads, e.g. blocks.2.hook_resid_post.")
    hook_layer: int | None = _f(None, "Layer of hook_name (informative).")
    model_name: str | None = _f(None, "Model the activations came from.")
    run: str | None = _f(None, "Run directory or model path the activations came from.")
    context_size: int | None = _f(None, "Tokens per context the activations came from.")
    metadata: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Free-form JSON-able notes."}
    )

    def __post_init__(self) -> None:
        check_types(self)
        require = _requirer()
        require(self.d_in >= 1, "d_in", self.d_in, "must be >= 1 (the activation width).")
        d_sae = self.d_sae
        if self.expansion_factor is not None:
            require(self.expansion_factor > 0, "expansion_factor", self.expansion_factor, "> 0.")
            derived = round(self.d_in * self.expansion_factor)
            require(
                d_sae is None or d_sae == derived,
                "d_sae",
                d_sae,
                f"contradicts expansion_factor={self.expansion_factor} (d_in * factor = "
                f"{derived}); give one of them.",
            )
            d_sae = derived
        require(
            d_sae is not None and d_sae >= 1,
            "d_sae",
            d_sae,
            "must be >= 1; give d_sae or expansion_factor.",
        )
        self._set("d_sae", d_sae)
        self._check_sparsity(require)
        if self.normalize_decoder is None:
            self._set("normalize_decoder", DECODER_UNIT_NORM[self.arch])
        if self.apply_b_dec_to_input is None:
            self._set("apply_b_dec_to_input", not self.is_transcoder)
        require(
            not (self.is_transcoder and self.apply_b_dec_to_input),
            "apply_b_dec_to_input",
            True,
            "a transcoder's b_dec lives on the output side and cannot be subtracted from "
            "its input; use false.",
        )
        require(
            self.skip_connection is False or self.is_transcoder,
            "skip_connection",
            self.skip_connection,
            "only transcoders (d_out or hook_name_out set) have a skip connection.",
        )
        require(self.d_out is None or self.d_out >= 1, "d_out", self.d_out, "must be >= 1.")
        for name in ("activation_scale", "activation_scale_out"):
            value = getattr(self, name)
            require(value is None or value > 0, name, value, "must be > 0.")
        require(self.decoder_init_norm > 0, "decoder_init_norm", self.decoder_init_norm, "> 0.")

    def _check_sparsity(self, require: Any) -> None:
        if self.arch in ("topk", "batchtopk"):
            require(
                self.k is not None and 0 < self.k <= self.d_sae,
                "k",
                self.k,
                f"{self.arch} needs 1 <= k <= d_sae ({self.d_sae}).",
            )
            if self.arch == "topk":
                require(float(self.k).is_integer(), "k", self.k, "topk needs a whole k.")
                self._set("k", int(self.k))
            require(
                0 < self.batchtopk_threshold_lr <= 1,
                "batchtopk_threshold_lr",
                self.batchtopk_threshold_lr,
                "must be in (0, 1].",
            )
        else:
            require(self.k is None, "k", self.k, f"only topk / batchtopk use k, not {self.arch}.")
        require(self.aux_k is None or self.aux_k >= 1, "aux_k", self.aux_k, "must be >= 1.")
        require(self.l1_coefficient >= 0, "l1_coefficient", self.l1_coefficient, ">= 0.")
        require(self.l0_coefficient >= 0, "l0_coefficient", self.l0_coefficient, ">= 0.")
        require(self.aux_k_coefficient >= 0, "aux_k_coefficient", self.aux_k_coefficient, ">= 0.")
        require(self.jumprelu_bandwidth > 0, "jumprelu_bandwidth", self.jumprelu_bandwidth, "> 0.")
        require(
            self.jumprelu_threshold_lr_scale > 0,
            "jumprelu_threshold_lr_scale",
            self.jumprelu_threshold_lr_scale,
            "must be > 0.",
        )
        require(
            self.jumprelu_init_threshold >= 0,
            "jumprelu_init_threshold",
            self.jumprelu_init_threshold,
            "must be >= 0.",
        )
        require(
            self.jumprelu_init_l0 is None or 0 < self.jumprelu_init_l0 <= self.d_sae,
            "jumprelu_init_l0",
            self.jumprelu_init_l0,
            f"must be in (0, d_sae = {self.d_sae}] (or None).",
        )
        require(
            self.pre_act_loss_coefficient >= 0,
            "pre_act_loss_coefficient",
            self.pre_act_loss_coefficient,
            "must be >= 0.",
        )
        if self.arch == "jumprelu" and self.jumprelu_sparsity_loss == "quadratic":
            require(
                self.target_l0 is not None and 0 < self.target_l0 <= self.d_sae,
                "target_l0",
                self.target_l0,
                f"the quadratic loss needs 0 < target_l0 <= d_sae ({self.d_sae}).",
            )

    def _set(self, name: str, value: Any) -> None:
        """Store a resolved default (frozen: only ever at construction)."""
        if getattr(self, name) is None:
            derived = getattr(self, "_derived", frozenset())
            object.__setattr__(self, "_derived", derived | {name})
        object.__setattr__(self, name, value)

    # --- derived quantities --------------------------------------------------------------
    @property
    def is_transcoder(self) -> bool:
        """Whether the SAE reconstructs another activation than the one it reads."""
        return self.d_out is not None or self.hook_name_out is not None

    @property
    def output_dim(self) -> int:
        """Width of the reconstruction: ``d_out`` for transcoders, else ``d_in``."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def torch_dtype(self) -> torch.dtype:
        """`dtype` as a torch dtype."""
        return DTYPES[self.dtype]

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (resolved defaults included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a dict; unknown keys are rejected with a did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(
                    key, data[key], "no such field.", did_you_mean(key, known), owner="SAEConfig"
                )
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the config (with a format marker); also written to `path`."""
        from lmscope.serialization import write_json

        data = {"format": FORMAT, **self.to_dict()}
        if path is not None:
            write_json(path, data)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> SAEConfig:
        """Read a config written by `to_json` (or an SAE directory's ``config.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError.about(str(path), f"cannot be read as JSON ({exc}).") from exc
        if not isinstance(data, dict) or data.pop("format", FORMAT) != FORMAT:
            raise ConfigError.about(str(path), f"is not an lmscope SAE config ({FORMAT}).")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with `changes` applied and validated.

        Fields that were resolved from a default (``normalize_decoder`` from ``arch``,
        ``d_sae`` from ``expansion_factor``...) are resolved again from the new values.
        """
        data = self.to_dict()
        for name in getattr(self, "_derived", ()):
            data[name] = None
        if "d_sae" in changes and "expansion_factor" not in changes:
            data["expansion_factor"] = None  # a new width replaces the old multiplier
        return self.from_dict({**data, **changes})


def _requirer() -> Any:
    def require(ok: bool, name: str, value: object, allowed: str) -> None:
        _require(ok, name, value, allowed, owner="SAEConfig")

    return require
