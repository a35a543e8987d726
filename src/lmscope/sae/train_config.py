"""`SAETrainConfig`: how an SAE is trained, and the schedules that follow from it.

The learning rate and the sparsity-coefficient warm-up are pure functions of the step
(no scheduler state), so a resumed run continues them exactly.

Defaults follow Anthropic's April 2024 recipe where it applies: Adam (0.9, 0.999),
linear learning-rate decay over the last 20% of training, a sparsity-coefficient
warm-up, b_dec initialised at the geometric median of the first batch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lmscope.config_validation import check_types
from lmscope.config_validation import require as _require
from lmscope.errors import ConfigError, did_you_mean

Schedule = Literal["constant", "linear", "cosine"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@typing.no_type_check  # check_types validates the fields with clearer messages
@dataclass(frozen=True, kw_only=True)
class SAETrainConfig:
    """Optimisation, schedules, dead-latent handling, logging and checkpointing."""

    total_steps: int | None = _f(None, "Optimizer steps (default: until the data ends).")
    total_tokens: int | None = _f(None, "Stop after this many activations (rows).")
    lr: float = _f(3e-4, "Peak learning rate of Adam.")
    betas: tuple[float, float] = _f((0.9, 0.999), "Adam's (beta1, beta2).")
    lr_warmup_steps: int = _f(0, "Steps of linear learning-rate warm-up from 0.")
    lr_schedule: Schedule = _f(
        "linear", "After warm-up: constant, linear decay, or cosine decay to final_lr."
    )
    lr_decay_steps: int | None = _f(
        None, "Steps of the decay, at the end (default: linear 20% of training, cosine all)."
    )
    final_lr: float = _f(0.0, "Learning rate at the end of the decay.")
    sparsity_warmup_steps: int = _f(
        0, "Steps over which the sparsity coefficient rises linearly from 0 to its value."
    )
    dead_after_tokens: int = _f(
        10_000_000, "A latent that has not fired for this many activations is dead."
    )
    resample_dead: bool = _f(
        False, "Re-initialise dead latents from badly reconstructed inputs (Anthropic 2023)."
    )
    resample_every_steps: int = _f(25_000, "Steps between resamplings (with resample_dead).")
    geometric_median_init: bool = _f(
        True,
        "Start b_dec at the geometric median of the first batch (else at 0, as SAELens). "
        "Which is better depends on the data: see BENCHMARKS.md, SAE training.",
    )
    grad_clip: float | None = _f(1.0, "Clip the gradient norm to this (None: no clipping).")
    log_every: int = _f(100, "Steps between metrics lines (and progress updates).")
    checkpoint_every: int | None = _f(None, "Steps between checkpoints (needs an out dir).")
    keep_checkpoints: int = _f(2, "Checkpoints kept (the newest).")
    seed: int = _f(0, "Seed of the trainer's own random draws (resampling).")
    device: str | None = _f(None, "Where to train (default: where the SAE is).")
    keep_freed_memory: bool = _f(
        True,
        "On CPU, keep freed memory for the next step instead of returning it to the kernel "
        "(faster steps; the resident size stays at its peak). See lmscope.allocator.",
    )

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))  # from JSON
        check_types(self)

        def require(ok: bool, name: str, value: object, allowed: str) -> None:
            _require(ok, name, value, allowed, owner="SAETrainConfig")

        for name in ("total_steps", "total_tokens", "lr_decay_steps", "checkpoint_every"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "must be >= 1 (or None).")
        require(self.lr > 0, "lr", self.lr, "must be > 0.")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two numbers in [0, 1).",
        )
        require(0 <= self.final_lr <= self.lr, "final_lr", self.final_lr, "must be in [0, lr].")
        for name in ("lr_warmup_steps", "sparsity_warmup_steps"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0.")
        for name in ("dead_after_tokens", "resample_every_steps", "log_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1.")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "> 0.")

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON-able values."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainConfig:
        """Build from a dict; unknown keys are rejected with a did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known)
                raise ConfigError(key, data[key], "no such setting.", hint, owner="SAETrainConfig")
        return cls(**data)

    def replace(self, **changes: Any) -> SAETrainConfig:
        """A copy with `changes` applied and validated."""
        return self.from_dict({**self.to_dict(), **changes})


def learning_rate(step: int, cfg: SAETrainConfig, total_steps: int | None) -> float:
    """The rate of optimizer step `step` (0-based): warm-up, plateau, then decay.

    With no known total (training until the data ends) there is no decay.
    """
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant" or total_steps is None:
        return cfg.lr
    after_warmup = max(total_steps - cfg.lr_warmup_steps, 1)
    default = after_warmup if cfg.lr_schedule == "cosine" else math.ceil(0.2 * total_steps)
    decay = min(cfg.lr_decay_steps or default, after_warmup)
    start = total_steps - decay
    if step < start:
        return cfg.lr
    progress = min((step - start) / decay, 1.0)
    if cfg.lr_schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return cfg.final_lr + shape * (cfg.lr - cfg.final_lr)


def sparsity_scale(step: int, cfg: SAETrainConfig) -> float:
    """Factor of the sparsity coefficient at step `step`: a linear ramp from ~0 to 1."""
    if step >= cfg.sparsity_warmup_steps:
        return 1.0
    return (step + 1) / cfg.sparsity_warmup_steps
