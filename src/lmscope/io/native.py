"""lmscope's own format: ``config.json`` (a `ModelConfig`) + ``model.safetensors``.

The model is built on the meta device (no memory, no random init) and the checkpoint's
tensors are assigned into it, so loading costs one read of the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmscope.config import ModelConfig
from lmscope.model import ARCHITECTURES
from lmscope.model.base import BaseTransformer
from lmscope.serialization import check_state_dict, read_safetensors


def load_native(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BaseTransformer:
    """Load a directory written by `model.save()`; bit-identical weights, eval mode."""
    directory = Path(path)
    cfg = ModelConfig.from_json(directory / "config.json")
    tensors = read_safetensors(directory / "model.safetensors", device=device or "cpu")
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](cfg)
    check_state_dict(model, tensors)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.init_buffers()
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()
