"""`load_gguf`: a GGUF file -> an lmscope model, dequantised into the dtype you ask for."""

from __future__ import annotations

from pathlib import Path

import torch

from lmscope.config import ModelConfig
from lmscope.io.gguf.metadata import gguf_config, gguf_family
from lmscope.io.gguf.reader import GGUFFile, is_gguf, open_gguf
from lmscope.io.gguf.weights import gguf_state_dict, llama_plan
from lmscope.model import ARCHITECTURES
from lmscope.model.base import BaseTransformer
from lmscope.serialization import check_state_dict


def load_gguf(
    source: str | Path | GGUFFile,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BaseTransformer:
    """The model in a GGUF file (a path or an opened `GGUFFile`), in eval mode.

    Every tensor is dequantised straight into `dtype` (default float32, which holds every
    supported type exactly) on `device` (default CPU). The model is built on the meta
    device and the weights assigned, so loading costs the model's memory once.
    """
    file = source if isinstance(source, GGUFFile) else open_gguf(source)
    cfg = gguf_config(file)
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](cfg)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    plan = llama_plan(cfg, gguf_family(file).permuted_qk)
    state = gguf_state_dict(
        file,
        plan,
        shapes,
        dtype=dtype or torch.float32,
        device=torch.device(device) if device is not None else torch.device("cpu"),
    )
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    model.init_buffers()
    return model.eval()


def read_gguf_config(source: str | Path | GGUFFile) -> ModelConfig:
    """The `ModelConfig` of a GGUF file's model, without reading any weights."""
    file = source if isinstance(source, GGUFFile) else open_gguf(source)
    return gguf_config(file)


def load_named(
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BaseTransformer:
    """A named real model (``smollm2``...; see `lmscope.real_models`), from its package."""
    # Imported here: the registry sits above io/ (it opens models with their tokenizers).
    from lmscope.real_models import resolve_real_model

    path = resolve_real_model(name)
    if is_gguf(path):
        return load_gguf(path, dtype=dtype, device=device)
    from lmscope.io import load

    return load(path, dtype=dtype, device=device)
