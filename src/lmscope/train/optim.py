"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule.

Weight decay pulls weights toward zero. It regularises matrices (projections,
embeddings), but decaying biases and norm gains only fights the parts of the model
that set scales and offsets, so they are excluded (as in nanoGPT and most LLM recipes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmscope.train.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters: matrices decay, vectors and scalars do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``final_lr``, then flat.

    `step` counts optimizer steps from 0; the rate is a pure function of it, so the
    schedule needs no saved state to resume.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps
    if decay_steps is None:
        decay_steps = max((cfg.max_steps or 0) - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.final_lr + cosine * (cfg.lr - cfg.final_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
