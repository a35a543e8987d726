"""`TrainConfig`: every setting of a training run, in one place.

A run is described by a model config (a preset or a config file), a `TrainConfig`, and
``--set key=value`` overrides applied to either. The resolved pair is saved in the run
directory (``run.json``) so that a run can be inspected, reproduced and resumed.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from lmscope.config import ModelConfig
from lmscope.config_validation import check_types
from lmscope.config_validation import require as _require
from lmscope.errors import ConfigError, did_you_mean

Objective = Literal["auto", "next-token", "masked-lm", "span-corruption"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@typing.no_type_check  # checked by check_types below, with clearer messages
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters and bookkeeping of one training run."""

    # --- data ---------------------------------------------------------------------
    data: str | None = _f(
        None, "Text file, folder, glob, JSONL or prepared data dir (default: Shakespeare)."
    )
    data_field: str | None = _f(None, "JSONL field holding the text.")
    tokenizer: str = _f("char", "char, bpe (trained on the data), gpt2, or a tokenizer dir.")
    bpe_vocab_size: int = _f(4096, "Vocabulary size when tokenizer is 'bpe'.")
    val_fraction: float = _f(0.1, "Share of each source's tokens (its end) held for validation.")
    # --- objective ----------------------------------------------------------------
    objective: Objective = _f(
        "auto",
        "next-token (decoders), masked-lm (encoders), span-corruption (encoder-decoders); "
        "auto picks by architecture.",
    )
    mask_fraction: float = _f(0.15, "masked-lm / span-corruption: share of tokens corrupted.")
    mean_span: float = _f(3.0, "span-corruption: mean length of a corrupted span.")
    # --- batch and schedule -------------------------------------------------------
    batch_size: int = _f(12, "Sequences per optimizer step (all devices together).")
    block_size: int | None = _f(None, "Tokens per sequence (default: the model's max_seq_len).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (batch_size is split).")
    max_steps: int | None = _f(2000, "Stop after this many optimizer steps.")
    max_tokens: int | None = _f(None, "Stop after this many training tokens.")
    max_minutes: float | None = _f(
        None, "Stop after this much training time (minutes; evaluation not counted)."
    )
    stop_at_val_loss: float | None = _f(
        None, "Stop at the first evaluation whose val loss is at or below this (time to loss)."
    )
    lr: float = _f(1e-3, "Peak learning rate.")
    min_lr: float | None = _f(None, "Final learning rate of the cosine decay (default lr / 10).")
    warmup_steps: int = _f(100, "Linear warm-up steps from 0 to lr.")
    decay_steps: int | None = _f(
        None, "Steps of cosine decay after warm-up (default: until max_steps)."
    )
    weight_decay: float = _f(0.1, "AdamW weight decay, applied to matrices only.")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.99, "AdamW beta2.")
    grad_clip: float | None = _f(1.0, "Clip the global gradient norm to this (None: off).")
    # --- evaluation, logging, checkpoints -------------------------------------------
    eval_every: int = _f(250, "Evaluate on the validation split every N steps.")
    eval_batches: int = _f(20, "Batches per evaluation.")
    log_every: int = _f(10, "Write a metrics line every N steps.")
    checkpoint_every: int | None = _f(
        None, "Checkpoint every N steps (default: at every evaluation)."
    )
    keep_last: int = _f(2, "Checkpoints kept besides the best one.")
    sample_tokens: int = _f(200, "Tokens of the sample printed at the end (0: none).")
    # --- execution ----------------------------------------------------------------
    device: Device = _f("auto", "auto: cuda when present, else cpu.")
    precision: Precision = _f("auto", "fp32 or bf16 autocast; auto: bf16 on cuda, fp32 on cpu.")
    compile: bool | None = _f(None, "torch.compile the model (default: on cuda only).")
    fsdp: bool = _f(False, "Shard parameters with FSDP under torchrun (large models).")
    keep_freed_memory: bool = _f(
        True,
        "On CPU, keep freed memory in the process for the next step instead of returning it "
        "to the kernel (faster steps; the resident size stays at its peak). See "
        "lmscope.allocator.",
    )
    seed: int = _f(1337, "Seed of initialisation, data order and dropout.")
    peak_flops: float | None = _f(
        None, "Device peak FLOP/s for the MFU estimate (default: measured / known)."
    )

    def __post_init__(self) -> None:
        check_types(self)
        require = partial(_require, owner="TrainConfig")
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batches", "log_every"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1.")
        require(
            self.batch_size % self.grad_accum == 0,
            "grad_accum",
            self.grad_accum,
            f"must divide batch_size={self.batch_size}.",
        )
        require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "must be in (0, 1).")
        require(self.lr > 0, "lr", self.lr, "must be > 0.")
        require(
            any(v is not None for v in (self.max_steps, self.max_tokens, self.max_minutes)),
            "max_steps",
            self.max_steps,
            "at least one of max_steps, max_tokens, max_minutes must be set.",
        )
        require(
            0 < self.mask_fraction < 1, "mask_fraction", self.mask_fraction, "must be in (0, 1)."
        )
        require(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1.")

    @property
    def final_lr(self) -> float:
        """Learning rate at the end of the cosine decay."""
        return self.min_lr if self.min_lr is not None else self.lr / 10

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are refused with a did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known)
                raise ConfigError(key, data[key], "no such setting.", hint, owner="TrainConfig")
        return cls(**data)


def train_field_help() -> dict[str, str]:
    """Help text of every `TrainConfig` field."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(
    model: dict[str, Any], train: dict[str, Any], overrides: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``key=value`` overrides to the model or train settings (names are unique)."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model, train = dict(model), dict(train)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected key=value, e.g. --set lr=3e-4.")
        value = parse_value(raw.strip())
        if key in train_fields:
            train[key] = value
        elif key in model_fields:
            model[key] = value
        else:
            hint = did_you_mean(key, model_fields | train_fields)
            raise ConfigError(key, value, "not a model or training setting.", hint)
    return model, train


def load_run_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a run spec JSON: ``{"model": {...} | "preset", "train": {...}}``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not ({"model", "train"} & set(data)):
        raise ConfigError.about(str(path), 'expected {"model": ..., "train": ...}.')
    model = data.get("model", {})
    if isinstance(model, str):
        from lmscope.presets import preset_dict

        model = preset_dict(model)
    return dict(model), dict(data.get("train", {}))
