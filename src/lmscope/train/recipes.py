"""Named training recipes: a model shape plus training settings that work well together.

Recipes are data, like model presets. `lmscope train` with no arguments runs the
default one, tuned to give a judgeable Shakespeare model on a laptop CPU in minutes.
"""

from __future__ import annotations

from typing import Any

from lmscope.errors import LmscopeError, did_you_mean

RECIPES: dict[str, dict[str, Any]] = {
    # The main job of `make run`: a character-level GPT on the complete Shakespeare plays,
    # about five minutes on a 2-core CPU.
    "shakespeare": {
        "model": {
            "name": "shakespeare-cpu",
            "d_model": 128,
            "n_layers": 4,
            "n_heads": 4,
            "max_seq_len": 64,
            "positional": "learned",
            "activation": "gelu",
            "dropout": 0.0,
            "qkv_bias": False,
            "attn_out_bias": False,
            "mlp_bias": False,
            "norm_bias": False,
            "tie_embeddings": True,
        },
        "train": {
            "batch_size": 12,
            "block_size": 64,
            "max_minutes": 5.0,
            "max_steps": 20000,
            "lr": 1e-3,
            "warmup_steps": 100,
            "weight_decay": 0.1,
            "eval_every": 500,
            "eval_batches": 20,
        },
    },
    # nanoGPT's "baby GPT" on character-level Shakespeare: a GPU recipe (hours on CPU).
    "shakespeare-char": {
        "model": "shakespeare-char",
        "train": {
            "batch_size": 64,
            "block_size": 256,
            "max_steps": 5000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_every": 250,
            "eval_batches": 200,
        },
    },
}


def recipe(name: str) -> tuple[dict[str, Any] | str, dict[str, Any]]:
    """The (model, train) settings of recipe `name`."""
    if name not in RECIPES:
        raise LmscopeError(
            f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}. "
            f"{did_you_mean(name, RECIPES)}".strip()
        )
    entry = RECIPES[name]
    model = entry["model"]
    return (dict(model) if isinstance(model, dict) else model), dict(entry["train"])
