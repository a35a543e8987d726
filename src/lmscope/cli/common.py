"""Helpers shared by CLI commands: the console, and turning a spec into a config/model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError, did_you_mean
from lmscope.presets import PRESETS

console = Console(width=None)


def resolve_config(spec: str) -> ModelConfig:
    """A preset name, a config JSON file, or a model directory -> its `ModelConfig`."""
    if spec in PRESETS:
        return ModelConfig.from_preset(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return ModelConfig.from_json(path)
    hint = did_you_mean(spec, PRESETS)
    raise LmscopeError(
        f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a config file or model "
        f"directory. {hint}".strip()
    )


def print_json(data: Any) -> None:
    """Print machine-readable JSON (no colours, no wrapping)."""
    print(json.dumps(data, indent=2))
