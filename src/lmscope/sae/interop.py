"""SAELens's on-disk format, both ways: ``cfg.json`` + ``sae_weights.safetensors``.

`save_saelens` writes an lmscope SAE so that ``sae_lens.SAE.load_from_disk(path)`` opens
it with the same encode / decode outputs; `load_saelens` opens a directory SAELens
wrote (``save_model`` / ``save_inference_model``, 6.x, and the common pre-6 fields).

How the variants map (SAELens 6 ``architecture``):

| lmscope | SAELens |
|---|---|
| standard | standard (transcoders: transcoder, skip_transcoder) |
| topk | topk, ``rescale_acts_by_decoder_norm`` false |
| batchtopk | jumprelu, one shared threshold (as SAELens saves BatchTopK) |
| jumprelu | jumprelu (transcoders: jumprelu_transcoder, jumprelu_skip_transcoder) |
| gated | gated |

Weights keep their names (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``,
``b_gate``, ``b_mag``, ``r_mag``); SAELens stores ``W_skip`` as ``[d_out, d_in]``.

Normalisation: SAELens's inference SAEs do not scale their inputs at run time, so an
lmscope SAE with an ``activation_scale`` is written with the factor folded into its
weights (``normalize_activations: none``; the factor is kept as metadata
``norm_scaling_factor``). Reading, a training checkpoint's ``activation_scaler.json``
(or ``norm_scaling_factor``) gives the factor; without one an
``expected_average_only_in`` SAE expects inputs already scaled, as in SAELens. TopK
SAEs trained with ``rescale_acts_by_decoder_norm`` get their decoder norms folded in,
which leaves their outputs unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.errors import CheckpointError
from lmscope.sae.base import SAE
from lmscope.sae.build import sae_class
from lmscope.sae.config import DTYPES, SAEConfig
from lmscope.serialization import (
    check_state_dict,
    read_safetensors,
    write_json,
    write_safetensors,
)

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
#: The SAELens format version written (6.x: config with ``architecture`` + ``metadata``).
SAELENS_FORMAT_VERSION = "6.0.0"

#: SAELens architecture -> (lmscope arch, transcoder, skip connection).
_FROM_SAELENS: dict[str, tuple[str, bool, bool]] = {
    "standard": ("standard", False, False),
    "topk": ("topk", False, False),
    "batchtopk": ("batchtopk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "gated": ("gated", False, False),
    "transcoder": ("standard", True, False),
    "skip_transcoder": ("standard", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
#: SAELens training-config fields with an lmscope equivalent.
_TRAINING_FIELDS = {
    "l1_coefficient": "l1_coefficient",
    "l0_coefficient": "l0_coefficient",
    "jumprelu_init_threshold": "jumprelu_init_threshold",
    "jumprelu_bandwidth": "jumprelu_bandwidth",
    "jumprelu_sparsity_loss_mode": "jumprelu_sparsity_loss",
    "jumprelu_tanh_scale": "jumprelu_tanh_scale",
    "target_l0": "target_l0",
    "pre_act_loss_coefficient": "pre_act_loss_coefficient",  # SAELens: dead latents only
    "aux_loss_coefficient": "aux_k_coefficient",
    "topk_threshold_lr": "batchtopk_threshold_lr",
    "decoder_init_norm": "decoder_init_norm",
}
_PROVENANCE = ("hook_name", "model_name", "context_size")


class SAELensFormatError(CheckpointError):
    """A SAELens directory lmscope cannot represent (or an SAE SAELens cannot)."""


# --- lmscope -> SAELens ----------------------------------------------------------------------
def _saelens_architecture(cfg: SAEConfig) -> str:
    arch = "jumprelu" if cfg.arch == "batchtopk" else cfg.arch
    if not cfg.is_transcoder:
        return arch
    if arch not in ("standard", "jumprelu"):
        raise SAELensFormatError(
            f"SAELens has no {cfg.arch} transcoder (only ReLU and JumpReLU transcoders); "
            "keep this one in lmscope's format."
        )
    prefix = "jumprelu_" if arch == "jumprelu" else ""
    return f"{prefix}{'skip_' if cfg.skip_connection else ''}transcoder"


def save_saelens(sae: SAE, path: str | Path) -> Path:
    """Write `sae` in SAELens's format into directory `path` (the SAE is not modified)."""
    cfg = sae.cfg
    architecture = _saelens_architecture(cfg)
    folded = copy.deepcopy(sae).cpu()
    folded.fold_activation_norm_scaling_factor()
    weights = {name: t.detach().contiguous() for name, t in folded.state_dict().items()}
    if cfg.arch == "batchtopk":  # one shared threshold -> JumpReLU's per-latent thresholds
        weights["threshold"] = (
            weights.pop("threshold").to(weights["b_enc"].dtype).expand(cfg.d_sae).contiguous()
        )
    if cfg.skip_connection:
        weights["W_skip"] = weights["W_skip"].T.contiguous()

    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "model_name": cfg.model_name,
        "context_size": cfg.context_size,
        "lmscope_config": cfg.to_dict(),
    }
    if sae.input_scale is not None:
        metadata["norm_scaling_factor"] = sae.input_scale
    if cfg.arch == "batchtopk":
        metadata["training_architecture"] = "batchtopk"
    data: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if cfg.arch == "topk":
        data.update(k=int(cfg.k), rescale_acts_by_decoder_norm=False)
    if cfg.is_transcoder:
        data["d_out"] = cfg.output_dim
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(weights, directory / SAELENS_WEIGHTS, metadata={"format": "pt"})
    write_json(directory / SAELENS_CONFIG, data)
    return directory


# --- SAELens -> lmscope ----------------------------------------------------------------------
def _modernise(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a pre-6 SAELens config to the 6.x layout (the fields lmscope reads)."""
    data = dict(data)
    metadata = dict(data.get("metadata") or {})
    for old, new in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn")):
        if old in data:
            data.setdefault(new, data.pop(old))
    for name in _PROVENANCE:  # pre-6 kept provenance at the top level
        if name in data and name not in metadata:
            metadata[name] = data[name]
    data["metadata"] = metadata
    if data.get("activation_fn") == "topk" and "k" not in data:
        data["k"] = (data.get("activation_fn_kwargs") or {}).get("k")
        data.setdefault("architecture", "topk")
    data.setdefault("architecture", "standard")
    if isinstance(data.get("normalize_activations"), bool):
        data["normalize_activations"] = (
            "expected_average_only_in" if data["normalize_activations"] else "none"
        )
    data.setdefault("normalize_activations", "none")
    data.setdefault("apply_b_dec_to_input", True)
    return data


def _scaling_factor(directory: Path, metadata: dict[str, Any]) -> float | None:
    scaler = directory / SAELENS_SCALER
    if scaler.is_file():
        factor = json.loads(scaler.read_text()).get("scaling_factor")
        if factor is not None:
            return float(factor)
    factor = metadata.get("norm_scaling_factor")
    return float(factor) if factor is not None else None


def _lmscope_config(data: dict[str, Any], directory: Path) -> tuple[SAEConfig, bool]:
    """The lmscope config of a (modernised) SAELens config, and whether to fold norms."""
    architecture = data["architecture"]
    if architecture not in _FROM_SAELENS:
        raise SAELensFormatError(
            f"{directory}: SAELens architecture {architecture!r} has no lmscope variant; "
            f"supported: {', '.join(_FROM_SAELENS)}."
        )
    arch, transcoder, skip = _FROM_SAELENS[architecture]
    normalize = data["normalize_activations"]
    if normalize not in ("none", "expected_average_only_in"):
        raise SAELensFormatError(
            f"{directory}: normalize_activations={normalize!r} is not supported by lmscope "
            "(supported: none, expected_average_only_in)."
        )
    if data.get("reshape_activations", "none") != "none":
        raise SAELensFormatError(
            f"{directory}: reshape_activations={data['reshape_activations']!r} (per-head "
            "hook_z SAEs) is not supported; lmscope SAEs read flat activations."
        )
    metadata = data["metadata"]
    fields: dict[str, Any] = {}
    saved = metadata.get("lmscope_config")
    if isinstance(saved, dict) and saved.get("arch") == arch:
        fields.update(saved)  # written by lmscope: training settings and provenance survive
    fields.update(
        {new: data[old] for old, new in _TRAINING_FIELDS.items() if data.get(old) is not None}
    )
    fields.update(
        arch=arch,
        d_in=int(data["d_in"]),
        d_sae=int(data["d_sae"]),
        expansion_factor=None,
        dtype=str(data.get("dtype", "float32")).removeprefix("torch."),
        apply_b_dec_to_input=bool(data["apply_b_dec_to_input"]),
        d_out=int(data["d_out"]) if transcoder else None,
        skip_connection=skip,
        normalize_activations=normalize,
        activation_scale=None,
        activation_scale_out=None,
        k=data.get("k") if arch in ("topk", "batchtopk") else None,
        normalize_decoder=None,
    )
    if fields["dtype"] not in DTYPES:
        fields["dtype"] = "float32"
    for name in _PROVENANCE:
        if metadata.get(name) is not None:
            fields[name] = metadata[name]
    if normalize == "expected_average_only_in":
        fields["activation_scale"] = _scaling_factor(directory, metadata)
    fold_norms = arch in ("topk", "batchtopk") and bool(data.get("rescale_acts_by_decoder_norm"))
    return SAEConfig.from_dict(fields), fold_norms


def _lmscope_weights(
    state: dict[str, Tensor], cfg: SAEConfig, directory: Path
) -> dict[str, Tensor]:
    state = dict(state)
    if "log_threshold" in state:  # SAELens < 6 stored JumpReLU thresholds as logs
        state["threshold"] = state.pop("log_threshold").exp()
    if cfg.arch == "batchtopk" and "topk_threshold" in state:
        state["threshold"] = state.pop("topk_threshold").double().reshape(())
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        factor = state.pop(name, None)
        if factor is not None and not torch.allclose(factor, torch.ones_like(factor)):
            raise SAELensFormatError(
                f"{directory}: a finetuning scaling factor ({name}) is not supported."
            )
    if "W_skip" in state:
        state["W_skip"] = state["W_skip"].T.contiguous()
    return state


def load_saelens(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Open an SAE directory written by SAELens (or by `save_saelens`)."""
    directory = Path(path)
    config_file = directory / SAELENS_CONFIG
    if not config_file.is_file():
        raise SAELensFormatError(f"{directory} has no {SAELENS_CONFIG}: not a SAELens SAE.")
    try:
        data = _modernise(json.loads(config_file.read_text()))
    except json.JSONDecodeError as exc:
        raise SAELensFormatError(f"{config_file} is not valid JSON ({exc}).") from exc
    cfg, fold_norms = _lmscope_config(data, directory)
    state = _lmscope_weights(read_safetensors(directory / SAELENS_WEIGHTS), cfg, directory)
    with torch.device("meta"):
        sae = sae_class(cfg)(cfg)
    dtype = cfg.torch_dtype
    state = {
        name: t.to(dtype) if name != "threshold" or cfg.arch != "batchtopk" else t
        for name, t in state.items()
    }
    check_state_dict(sae, state)
    sae.load_state_dict(state, assign=True)
    if fold_norms:  # TopK on rescaled pre-activations == plain TopK on folded weights
        sae._scale_latents_(sae.decoder_norms().detach().clamp_min(1e-12))
    return sae.to(device)


def convert(path: str | Path, to: str, out: str | Path) -> Path:
    """Rewrite the SAE at `path` in format `to` (``saelens`` or ``lmscope``) at `out`."""
    from lmscope.sae.build import load_sae

    if to not in ("saelens", "lmscope"):
        raise SAELensFormatError(f"unknown SAE format {to!r}: use 'saelens' or 'lmscope'.")
    sae = load_sae(path)
    return save_saelens(sae, out) if to == "saelens" else sae.save(out)
