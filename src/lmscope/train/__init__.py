"""Training: `train()` runs one training run end to end (see `TrainConfig` for settings).

Modules: `config` (TrainConfig, overrides), `setup` (device, tokenizer, data, run dir),
`objectives` (next-token, masked-LM, span corruption), `optim` (AdamW, schedule),
`trainer` (the loop), `checkpoint` (atomic, resumable), `distributed` (DDP / FSDP),
`log` (metrics, loss picture), `progress` (the live bar), `peak` (MFU).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lmscope.allocator import kept_freed_memory
from lmscope.config import ModelConfig
from lmscope.presets import PRESETS, preset_dict
from lmscope.serialization import fsync_dir
from lmscope.train import distributed as dist_
from lmscope.train.checkpoint import latest_checkpoint, read_index
from lmscope.train.config import TrainConfig, apply_overrides
from lmscope.train.progress import ProgressDisplay
from lmscope.train.setup import RUN_FILE, Run, prepare_run, resolve_device
from lmscope.train.trainer import Trainer, TrainResult

MODEL_DIR = "model"


def _model_dict(model: ModelConfig | dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(model, ModelConfig):
        return model.to_dict()
    if isinstance(model, str):
        if model in PRESETS:
            return preset_dict(model)
        return ModelConfig.from_json(model).to_dict()
    return dict(model)


def train(
    model: ModelConfig | dict[str, Any] | str,
    config: TrainConfig | None = None,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = True,
    show_progress: bool = True,
    console: Console | None = None,
    on_step: Callable[[Trainer], None] | None = None,
) -> TrainResult:
    """Train `model` (config, dict or preset name) with `config`, writing the run to `out`.

    With `resume` (the default) an existing run in `out` continues from its latest
    checkpoint; a finished run is left as it is. `overrides` are ``key=value`` strings
    for model or training settings.
    """
    run_dir = Path(out)
    model_dict = _model_dict(model)
    train_dict = (config or TrainConfig()).to_dict()
    saved = _saved_run(run_dir) if resume else None
    if saved is not None and config is None:
        train_dict = saved["train"]  # resuming without new settings: the run's own
    model_dict, train_dict = apply_overrides(model_dict, train_dict, list(overrides))
    train_cfg = TrainConfig.from_dict(train_dict)

    device = resolve_device(train_cfg, dist_.Dist())
    info = dist_.setup(device.type)
    keep = train_cfg.keep_freed_memory and device.type == "cpu"
    try:
        with kept_freed_memory(keep):
            return _train(
                model_dict, train_cfg, run_dir, info, resume, show_progress, console, on_step
            )
    finally:
        dist_.teardown(info)


def _train(
    model_dict: dict[str, Any],
    train_cfg: TrainConfig,
    run_dir: Path,
    info: dist_.Dist,
    resume: bool,
    show_progress: bool,
    console: Console | None,
    on_step: Callable[[Trainer], None] | None,
) -> TrainResult:
    """The run itself: prepare, fit (with a progress display on rank 0), export."""
    run = prepare_run(model_dict, train_cfg, run_dir, info, resume)
    trainer = Trainer(run, info, on_step=on_step)
    if show_progress and info.is_main:
        with ProgressDisplay(train_cfg.max_steps, trainer.step, console) as display:
            trainer.progress = display
            result = trainer.fit()
    else:
        result = trainer.fit()
    if info.is_main:
        result.model_dir = export_model(run)
    dist_.barrier(info)
    return result


def _saved_run(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def export_model(run: Run) -> Path:
    """Copy the latest checkpoint's model and tokenizer to ``run_dir/model`` (atomically)."""
    source = latest_checkpoint(run.run_dir)
    target = run.run_dir / MODEL_DIR
    tmp = run.run_dir / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    assert source is not None
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    spec = json.loads((run.run_dir / RUN_FILE).read_text())
    (tmp / "objective.json").write_text(json.dumps(spec["objective"], indent=2) + "\n")
    old = run.run_dir / f".{MODEL_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(run.run_dir)
    return target


__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "export_model",
    "read_index",
    "train",
]
