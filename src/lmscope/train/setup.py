"""Everything a run needs before its first step: device, tokenizer, data, configs.

A run directory holds ``run.json`` (the resolved model and training configs), the
prepared data (``data/``, unless the user pointed at prepared data elsewhere), the
metrics log, the loss picture, ``checkpoints/`` and, at the end, ``model/``: a model
directory with its tokenizer, ready for ``lmscope generate`` and ``lmscope explain``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.train.config import TrainConfig
from lmscope.train.distributed import Dist, barrier
from lmscope.train.objectives import Objective, make_objective

RUN_FILE = "run.json"
#: Settings a resumed run may change: when to stop, how often to look, where to run.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "max_tokens",
        "max_minutes",
        "stop_at_val_loss",
        "eval_every",
        "eval_batches",
        "log_every",
        "checkpoint_every",
        "keep_last",
        "sample_tokens",
        "device",
        "peak_flops",
    }
)


@dataclass
class Run:
    """The resolved pieces of a training run."""

    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    tokenizer: Any  # lmscope.tokenizers.Tokenizer
    data: Any  # lmscope.data.TokenData
    objective: Objective
    block_size: int
    device: torch.device
    precision: str  # "fp32" | "bf16"
    compile: bool


def resolve_device(cfg: TrainConfig, info: Dist) -> torch.device:
    """The device `cfg` asks for (cuda when present for 'auto')."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LmscopeError("device='cuda' was asked for but no CUDA device is available.")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def _prepared(path: str | None) -> Path | None:
    if path is not None and (Path(path) / "meta.json").is_file():
        return Path(path)
    return None


def prepare_data(cfg: TrainConfig, run_dir: Path, info: Dist) -> tuple[Any, Any]:
    """The run's tokenized data and its tokenizer (prepared once, by rank 0)."""
    from lmscope import data as data_mod
    from lmscope.tokenizers import make_tokenizer

    directory = _prepared(cfg.data) or run_dir / "data"
    if info.is_main and not (directory / "meta.json").is_file():
        if cfg.data is None:
            sources = data_mod.resolve_sources(data_mod.default_corpus())
        else:
            sources = data_mod.resolve_sources(cfg.data, field=cfg.data_field)
        tokenizer = make_tokenizer(cfg.tokenizer, sources, cfg.bpe_vocab_size)
        data_mod.prepare(sources, directory, tokenizer, val_fraction=cfg.val_fraction)
    barrier(info)
    token_data = data_mod.TokenData(directory)
    return token_data, token_data.tokenizer


def _check_resume(saved: dict[str, Any], asked: dict[str, Any], what: str) -> None:
    changed = {
        k: (saved.get(k), v)
        for k, v in asked.items()
        if saved.get(k) != v and k not in RESUMABLE_CHANGES
    }
    if changed:
        listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise LmscopeError(
            f"cannot resume with different {what} settings ({listing}); a resumed run "
            "continues the saved one. Start a new run (another --out), or only change "
            f"{', '.join(sorted(RESUMABLE_CHANGES))}."
        )


def prepare_run(
    model: dict[str, Any], train: TrainConfig, run_dir: Path, info: Dist, resume: bool
) -> Run:
    """Resolve configs, tokenizer, data and objective for a new or resumed run."""
    run_file = run_dir / RUN_FILE
    if resume and run_file.is_file():
        saved = json.loads(run_file.read_text())
        _check_resume(saved["train"], train.to_dict(), "training")
        model_cfg = ModelConfig.from_dict(saved["model"])
        _check_resume(saved["model"], {**saved["model"], **_model_changes(model, saved)}, "model")
    elif run_file.is_file() and not resume:
        raise LmscopeError(
            f"{run_dir} already holds a run; resume it (--resume) or choose another --out."
        )
    else:
        model_cfg = None
    run_dir.mkdir(parents=True, exist_ok=True)
    data, tokenizer = prepare_data(train, run_dir, info)

    base = model if model_cfg is None else model_cfg.to_dict()
    architecture = base.get("architecture", "decoder")
    block = train.block_size or int(base.get("max_seq_len") or 1024)
    objective = make_objective(
        train.objective,
        architecture,
        tokenizer.vocab_size,
        block,
        train.mask_fraction,
        train.mean_span,
    )
    if model_cfg is None:
        model_cfg = ModelConfig.from_dict(
            {**model, "vocab_size": tokenizer.vocab_size + objective.extra_tokens}
        )
    if block > model_cfg.max_seq_len:
        raise LmscopeError(
            f"block_size={block} is longer than the model's max_seq_len="
            f"{model_cfg.max_seq_len}; lower block_size or --set max_seq_len={block}."
        )
    device = resolve_device(train, info)
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    compile_model = train.compile if train.compile is not None else device.type == "cuda"

    if info.is_main and not run_file.is_file():
        spec = {
            "model": model_cfg.to_dict(),
            "train": train.to_dict(),
            "objective": {"name": objective.name, "special_tokens": objective.special_tokens()},
        }
        run_file.write_text(json.dumps(spec, indent=2) + "\n")
    barrier(info)
    return Run(
        run_dir,
        model_cfg,
        train,
        tokenizer,
        data,
        objective,
        block,
        device,
        precision,
        compile_model,
    )


def _model_changes(model: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """Model fields the user set explicitly for a resumed run (vocab is the run's own)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return {k: v for k, v in model.items() if k in fields and k not in ("vocab_size", "name")}
