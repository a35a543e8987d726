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


def prompt_option(text: str | None, tokens: str | None) -> str | list[int]:
    """The input from ``--text`` or ``--tokens 5,17,42`` (exactly one of them)."""
    if (text is None) == (tokens is None):
        raise LmscopeError("give the input as --text or as --tokens (one of them).")
    if text is not None:
        return text
    assert tokens is not None
    try:
        return [int(t) for t in tokens.replace(",", " ").split()]
    except ValueError:
        raise LmscopeError(f"--tokens {tokens!r}: give integer token ids, e.g. 5,17,42.") from None


def print_json(data: Any) -> None:
    """Print machine-readable JSON (no colours, no wrapping)."""
    print(json.dumps(data, indent=2))


def open_model(spec: str, *, seed: int = 0) -> tuple[Any, Any, str]:
    """Model (eval mode), tokenizer (or None) and a label for any model spec an analysis takes.

    `spec` is a training-run or model directory, a ``.gguf`` file, a real model's name
    (``smollm2``, ``minilm``) or a preset, which is built with random weights from
    `seed` (GPT-2's tokenizer comes with the presets of GPT-2's vocabulary size).
    """
    import torch

    from lmscope.generate.loading import load_for_generation
    from lmscope.model import build_model
    from lmscope.real_models import is_real_model
    from lmscope.tokenizers.gpt2 import GPT2_VOCAB_SIZE, gpt2_tokenizer

    if spec in PRESETS and not Path(spec).exists():
        cfg = ModelConfig.from_preset(spec)
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
        tokenizer = gpt2_tokenizer() if cfg.vocab_size == GPT2_VOCAB_SIZE else None
        return model, tokenizer, f"{spec} (random weights, seed {seed})"
    if not (is_real_model(spec) or Path(spec).exists()):
        hint = did_you_mean(spec, [*PRESETS, "smollm2", "minilm"])
        raise LmscopeError(
            f"{spec!r} is not a run or model directory, a .gguf file, a real model "
            f"(smollm2, minilm) or a preset ({', '.join(PRESETS)}). {hint}".strip()
        )
    model, tokenizer, path = load_for_generation(spec, need_tokenizer=False)
    return model.eval(), tokenizer, str(path)
