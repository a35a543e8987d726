"""Checkpoints of SAE training: written atomically, the newest few kept, resumed exactly.

A checkpoint is a directory ``OUT/checkpoints/step-0000500/`` holding:
- ``saes/<name>/``: each SAE in lmscope's format (``config.json`` + ``model.safetensors``),
  so any checkpoint opens with `load_sae`;
- ``trainer_state.pt``: optimizer moments, firing statistics, step, activations seen,
  random-generator states and the activation source's position. Written with
  ``torch.save``, read with ``torch.load(weights_only=True)`` (tensors and plain
  containers only, no arbitrary pickle).

The directory is assembled under a temporary name and renamed into place, then
``checkpoints/index.json`` (the same index as model training's) is replaced
atomically, so a crash leaves the previous checkpoint and index intact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.errors import CheckpointError
from lmscope.sae.base import SAE
from lmscope.serialization import fsync_dir, write_json
from lmscope.train.checkpoint import INDEX, latest_checkpoint, read_index

if TYPE_CHECKING:
    from lmscope.sae.trainer import SAETrainer

TRAINER_STATE = "trainer_state.pt"
SAES_DIR = "saes"


def sae_dirname(name: str) -> str:
    """A directory name for the SAE called `name` (hook names are kept as they are)."""
    return name.replace("/", "_").replace("\\", "_") or "sae"


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())


def save_training_checkpoint(
    out: Path, step: int, saes: Mapping[str, SAE], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` under ``out/checkpoints``, update the index, prune old ones."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sae_name, sae in saes.items():
        sae.save(tmp / SAES_DIR / sae_dirname(sae_name))
    torch.save(state, tmp / TRAINER_STATE)
    _fsync_tree(tmp)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)

    history = [h for h in read_index(out).get("history", []) if h["name"] != name]
    history.append({"name": name, "step": step})
    for entry in history[:-keep]:
        shutil.rmtree(root / entry["name"], ignore_errors=True)
    history = history[-keep:]
    write_json(root / INDEX, {"latest": name, "best": None, "history": history})
    return final


def latest_training_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of an SAE training run in `out`, if any."""
    path = latest_checkpoint(out)
    return path if path is not None and (path / TRAINER_STATE).is_file() else None


def load_training_state(path: Path) -> dict[str, Any]:
    """The trainer state of checkpoint directory `path` (safely: weights-only loading)."""
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not an SAE training checkpoint: {TRAINER_STATE} missing.")
    try:
        return torch.load(state_file, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {state_file}: {exc}") from exc


def restore_saes(path: Path, saes: Mapping[str, SAE]) -> None:
    """Load each SAE's weights and config from checkpoint `path` into `saes` (in place).

    The checkpoint must hold SAEs of the same names, variants and shapes.
    """
    from lmscope.sae.build import load_sae

    for name, sae in saes.items():
        directory = path / SAES_DIR / sae_dirname(name)
        if not directory.is_dir():
            raise CheckpointError(
                f"checkpoint {path} has no SAE {name!r}: it was written by a run that "
                f"trained other SAEs ({', '.join(p.name for p in (path / SAES_DIR).iterdir())})."
            )
        saved = load_sae(directory)
        mine, theirs = sae.cfg, saved.cfg
        shape = ("arch", "d_in", "d_sae", "d_out", "skip_connection")
        if any(getattr(mine, f) != getattr(theirs, f) for f in shape):
            raise CheckpointError(
                f"checkpoint SAE {name!r} is {theirs.arch} d_in={theirs.d_in} "
                f"d_sae={theirs.d_sae}; the SAE given is {mine.arch} d_in={mine.d_in} "
                f"d_sae={mine.d_sae}. Use another output directory or resume=False."
            )
        sae.cfg = theirs  # e.g. the activation scale estimated when the run started
        with torch.no_grad():
            for key, value in saved.state_dict().items():
                sae.state_dict()[key].copy_(value)


def trainer_state(trainer: SAETrainer) -> dict[str, Any]:
    """Everything besides the SAEs' weights that a resumed `trainer` needs."""
    source_state = getattr(trainer.source, "state_dict", None)
    return {
        "step": trainer.step,
        "tokens": trainer.tokens,
        "batches": trainer.batches,
        "elapsed": trainer.elapsed,
        "resampled": trainer.resampled,
        "total_steps": trainer.total_steps,
        "members": {
            m.name: {
                "optimizer": m.optimizer.state_dict(),
                "tracker": m.tracker.state_dict(),
                "prescaled": m.prescaled,
            }
            for m in trainer.members
        },
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "source": source_state() if callable(source_state) else None,
    }


def restore_trainer(trainer: SAETrainer, path: Path) -> None:
    """Put `trainer` (SAEs, optimizers, statistics, generators, data position) back to
    checkpoint `path`."""
    state = load_training_state(path)
    missing = [m.name for m in trainer.members if m.name not in state["members"]]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} was written for SAEs {sorted(state['members'])}, not "
            f"{missing}; use another output directory or resume=False."
        )
    restore_saes(path, {m.name: m.sae for m in trainer.members})
    for m in trainer.members:
        saved = state["members"][m.name]
        m.optimizer.load_state_dict(saved["optimizer"])
        m.tracker.load_state_dict(saved["tracker"])
        m.prescaled = bool(saved["prescaled"])
    trainer.step, trainer.tokens = int(state["step"]), int(state["tokens"])
    trainer.batches, trainer.elapsed = int(state["batches"]), float(state["elapsed"])
    trainer.resampled = int(state["resampled"])
    trainer.total_steps = trainer.cfg.total_steps or state["total_steps"]
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    trainer._iter = iter(trainer.source)
    load = getattr(trainer.source, "load_state_dict", None)
    if callable(load) and state["source"] is not None:
        load(state["source"])
    else:  # a plain iterable: replay it past the batches already used
        for _ in range(trainer.batches):
            next(trainer._iter)
