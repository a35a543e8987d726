"""Reading models from disk: `load(path)` dispatches on what the path holds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmscope.errors import CheckpointError
from lmscope.io.native import load_native
from lmscope.model.base import BaseTransformer


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BaseTransformer:
    """Load a model saved by `model.save(dir)` (``config.json`` + ``model.safetensors``)."""
    directory = Path(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} is not a model directory: it has no config.json. lmscope loads "
            "directories written by model.save()."
        )
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict) and "model_type" in raw and "d_model" not in raw:
        raise CheckpointError(
            f"{directory} is a Hugging Face checkpoint (model_type={raw['model_type']!r}); "
            "this version of lmscope loads only its own format (config.json with "
            "ModelConfig fields + model.safetensors)."
        )
    return load_native(directory, dtype=dtype, device=device)


__all__ = ["load", "load_native"]
