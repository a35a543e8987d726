"""Shared test helpers: small configs of every kind, and the shared folder when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmscope import ModelConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"


def small(preset: str = "llama-tiny", **overrides: object) -> ModelConfig:
    """A preset shrunk to test size (2 layers, width 32, vocab 61), with overrides."""
    base = ModelConfig.from_preset(preset)
    shrink: dict[str, object] = {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "vocab_size": 61,
        "max_seq_len": 64,
        "dropout": 0.0,
    }
    if base.architecture == "encoder-decoder":
        shrink["n_decoder_layers"] = 2
    if base.n_kv_heads != base.n_heads and "n_kv_heads" not in overrides:
        shrink["n_kv_heads"] = 2
    if base.sliding_window is not None:
        shrink["sliding_window"] = 5
    # Fields a preset sets explicitly are shrunk too; derived ones follow d_model.
    for field, value in (("d_head", 8), ("d_mlp", 48)):
        if field not in base._derived:  # type: ignore[attr-defined]
            shrink[field] = value
    return base.replace(**{**shrink, **overrides})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
