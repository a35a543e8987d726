"""Training checkpoints: written atomically, kept last-N plus best, resumed exactly.

A checkpoint is a directory ``checkpoints/step-0000500/`` holding:
- ``config.json`` + ``model.safetensors``: a complete model (``lmscope.load`` opens it),
- the tokenizer files, so the directory is self-contained,
- ``trainer_state.pt``: optimizer state, step, tokens seen, data-sampler and RNG states.
  It is written with ``torch.save`` and read with ``torch.load(weights_only=True)``,
  which only accepts tensors and plain containers (no arbitrary pickle).

The directory is assembled under a temporary name and renamed into place, then
``checkpoints/index.json`` (which names the latest and the best) is replaced
atomically. A crash at any point leaves the previous checkpoint and index intact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError
from lmscope.serialization import read_safetensors, write_json, write_safetensors

TRAINER_STATE = "trainer_state.pt"
INDEX = "index.json"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_config: ModelConfig,
    model_state: Mapping[str, Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    save_extra: Any = None,
    val_loss: float | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, update the index, prune old checkpoints.

    `save_extra(directory)` writes anything else the checkpoint needs (the tokenizer).
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_json(tmp / "config.json", model_config.to_dict())
    write_safetensors(model_state, tmp / "model.safetensors", metadata={"format": "pt"})
    torch.save({"optimizer": optimizer_state, "trainer": trainer_state}, tmp / TRAINER_STATE)
    if save_extra is not None:
        save_extra(tmp)
    _fsync_tree(tmp)
    final = root / name
    if final.exists():  # re-saving the same step (e.g. the final step after an eval)
        shutil.rmtree(final)
    os.replace(tmp, final)

    index = read_index(run_dir)
    history = [h for h in index.get("history", []) if h["name"] != name]
    history.append({"name": name, "step": step, "val_loss": val_loss})
    best = index.get("best")
    best_loss = index.get("best_val_loss")
    if val_loss is not None and (best_loss is None or val_loss < best_loss):
        best, best_loss = name, val_loss
    kept = {h["name"] for h in history[-keep_last:]} | ({best} if best else set())
    for entry in history:
        if entry["name"] not in kept:
            shutil.rmtree(root / entry["name"], ignore_errors=True)
    history = [h for h in history if h["name"] in kept]
    write_json(
        root / INDEX,
        {"latest": name, "best": best, "best_val_loss": best_loss, "history": history},
    )
    return final


def read_index(run_dir: Path) -> dict[str, Any]:
    """The checkpoint index of a run (empty when it has none)."""
    import json

    path = run_dir / "checkpoints" / INDEX
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Directory of the run's latest complete checkpoint, if any."""
    name = read_index(run_dir).get("latest")
    return run_dir / "checkpoints" / name if name else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory (safely: safetensors and weights-only loading)."""
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a training checkpoint: {TRAINER_STATE} is missing.")
    try:
        state = torch.load(state_file, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {state_file}: {exc}") from exc
    return Checkpoint(
        path=path,
        model_state=read_safetensors(path / "model.safetensors"),
        optimizer_state=state["optimizer"],
        trainer_state=state["trainer"],
    )
