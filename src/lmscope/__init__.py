"""lmscope: build, train, run and look inside transformer language models."""

from __future__ import annotations

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError, ConfigError, LmscopeError
from lmscope.hooks import HookPoint
from lmscope.io import load
from lmscope.model import EncoderDecoder, KVCache, Transformer, build_model
from lmscope.presets import preset_names

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EncoderDecoder",
    "HookPoint",
    "KVCache",
    "LmscopeError",
    "ModelConfig",
    "Transformer",
    "__version__",
    "build_model",
    "load",
    "preset_names",
]
