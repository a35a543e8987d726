"""Named training recipes: a model shape plus training settings that work well together.

Recipes are data, like model presets. `lmscope train` with no arguments runs the
default one, tuned to give a judgeable Shakespeare model on a laptop CPU in minutes.
"""

from __future__ import annotations

from typing import Any

from lmscope.errors import LmscopeError, did_you_mean

# A small modern char-level GPT (RoPE, SwiGLU, no biases, tied embeddings): on a 2-core
# CPU these shapes learn Shakespeare faster per second than nanoGPT's learned-position
# GELU GPT (measurements: BENCHMARKS.md, "Time to loss"; `bench/time_to_loss.py`).
_CPU_MODEL: dict[str, Any] = {
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 4,
    "positional": "rope",
    "activation": "swiglu",
    "dropout": 0.0,
    "qkv_bias": False,
    "attn_out_bias": False,
    "mlp_bias": False,
    "norm_bias": False,
    "tie_embeddings": True,
}

RECIPES: dict[str, dict[str, Any]] = {
    # The main job of `make run`: a character-level GPT on the complete Shakespeare plays.
    # 2,000 steps take about 4-5 minutes on a 2-core CPU; `max_minutes` caps the training
    # time at 5 minutes on slower machines (the schedule then ends before its decay does).
    "shakespeare": {
        "reference": "val 1.51 after 2,000 steps on the complete plays (README, Training)",
        "model": {**_CPU_MODEL, "name": "shakespeare-cpu", "max_seq_len": 128},
        "train": {
            "batch_size": 12,
            "block_size": 128,
            "max_steps": 2000,
            "max_minutes": 5.0,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 100,
            "weight_decay": 0.1,
            "eval_every": 250,
            "eval_batches": 20,
        },
    },
    # About a minute on a 2-core CPU: nanoGPT's CPU recipe (val 1.886 on tiny Shakespeare
    # after 2,000 steps) in 750 steps, with RoPE, SwiGLU and a higher learning rate.
    "shakespeare-quick": {
        "reference": "val 1.87 on tiny Shakespeare after 750 steps (BENCHMARKS.md)",
        "model": {**_CPU_MODEL, "name": "shakespeare-quick", "max_seq_len": 64},
        "train": {
            "batch_size": 12,
            "block_size": 64,
            "max_steps": 750,
            "lr": 4e-3,
            "min_lr": 4e-4,
            "warmup_steps": 50,
            "weight_decay": 0.1,
            "eval_every": 250,
            "eval_batches": 50,
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


def recipe_reference(name: str) -> str | None:
    """The result recipe `name` is known to reach, to print beside a run's own."""
    return RECIPES.get(name, {}).get("reference")
