"""Reading models from disk: `load(path)` dispatches on what the path holds.

- a directory written by ``model.save()`` (``config.json`` with `ModelConfig` fields +
  ``model.safetensors``): `native.load_native`;
- a Hugging Face model directory (``config.json`` with a ``model_type``): `hf.load_hf`;
- a ``.gguf`` file, or a name that is not a path (a shortcut of the real-models
  registry, such as ``smollm2``): `lmscope.io.gguf`, imported only then.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmscope.errors import CheckpointError, LmscopeError
from lmscope.io.native import load_native
from lmscope.model.base import BaseTransformer
from lmscope.model.processing import process_weights as _process_weights


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    process_weights: bool = False,
) -> BaseTransformer:
    """Load a model: an lmscope save, a Hugging Face directory, a GGUF file or a shortcut.

    ``process_weights=True`` applies `lmscope.model.processing.process_weights` (fold the
    norms, centre the writing weights and the unembedding, fold the value biases), as
    TransformerLens' ``from_pretrained`` does: same log-probabilities, simpler weights.
    """
    model = _load(path, dtype=dtype, device=device)
    if process_weights:
        _process_weights(model)
    return model


def _load(
    path: str | Path, *, dtype: torch.dtype | None, device: str | torch.device | None
) -> BaseTransformer:
    """Dispatch on what `path` holds (see the module docstring)."""
    target = Path(path)
    if target.suffix == ".gguf" or (not target.exists() and _is_name(str(path))):
        return _load_gguf_or_named(str(path), dtype=dtype, device=device)
    directory = target
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} is not a model directory: it has no config.json. lmscope loads "
            "directories written by model.save(), Hugging Face model directories, .gguf "
            "files and named models."
        )
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict) and "model_type" in raw:  # ModelConfig has no such field
        from lmscope.io.hf import load_hf  # the families register on import

        return load_hf(directory, dtype=dtype, device=device)
    return load_native(directory, dtype=dtype, device=device)


def _is_name(text: str) -> bool:
    """A registry shortcut looks like ``smollm2`` or ``minilm``: no path separators."""
    return bool(text) and "/" not in text and "\\" not in text and not text.startswith(".")


def _load_gguf_or_named(
    spec: str, *, dtype: torch.dtype | None, device: str | torch.device | None
) -> BaseTransformer:
    """Hand `spec` (a ``.gguf`` file or a registry name) to `lmscope.io.gguf`."""
    try:
        from lmscope.io import gguf
    except ImportError as exc:
        raise LmscopeError(
            f"{spec!r} is not a model directory, and GGUF files / named models are not "
            "available in this version of lmscope."
        ) from exc
    if spec.endswith(".gguf"):
        return gguf.load_gguf(spec, dtype=dtype, device=device)
    return gguf.load_named(spec, dtype=dtype, device=device)


__all__ = ["load", "load_native"]
