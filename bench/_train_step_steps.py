"""One training step of bench/train_step.py, and the groups of steps it times (eager,
compiled) or profiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _train_step_models import Call
from lmscope.train.config import TrainConfig
from lmscope.train.optim import make_optimizer


def make_step(
    model: nn.Module,
    call: Call,
    tokens: Tensor,
    targets: Tensor,
    autocast: bool = False,
    runner: nn.Module | None = None,
) -> Callable[[], Tensor]:
    """One optimizer step of `model` on the fixed batch; returns the loss (detached).

    The forward runs through `runner` (a compiled wrapper of `model`) when given. A new
    optimizer each time: its first step allocates AdamW's state (part of the warm-up).
    """
    optimizer = make_optimizer(model, TrainConfig())
    module = model if runner is None else runner

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            logits = call(module, tokens)
            flat = logits.reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(flat, targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def fixed_batch(batch: int, seq: int, vocab: int) -> tuple[Tensor, Tensor]:
    """Random tokens [batch, seq] and their next-token targets (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    return window[:, :-1], window[:, 1:]


def timed_group(
    fwd: Any, steps: dict[str, Callable[[], Tensor]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per step of each variant, round-robin after `warmup` untimed steps each."""
    return fwd.interleaved(steps, rounds, warmup=warmup)


def compile_group(
    models: dict[str, tuple[nn.Module, Call]], tokens: Tensor, targets: Tensor
) -> tuple[dict[str, Callable[[], Tensor]], dict[str, float], dict[str, str]]:
    """``torch.compile`` every model the same way (default mode); time each first step.

    Returns the compiled steps, the first-step seconds (compilation of forward and
    backward included) and the error of any implementation that failed to compile.
    """
    steps, first, errors = {}, {}, {}
    for impl, (model, call) in models.items():
        try:
            step = make_step(model, call, tokens, targets, runner=torch.compile(model))
            start = time.perf_counter()
            step()
            first[impl] = time.perf_counter() - start
            steps[f"{impl} compiled"] = step
        except Exception as exc:  # report and go on: one failure must not hide the others
            errors[impl] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return steps, first, errors


def profile_step(step: Callable[[], Tensor], top: int = 15) -> tuple[str, list[dict[str, Any]]]:
    """torch.profiler's self-CPU-time table of one step, and its top ops as data."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
        for e in averages[:top]
    ]
    total_ms = sum(e.self_cpu_time_total for e in averages) / 1e3
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return table + f"\ntotal self CPU: {total_ms:.0f} ms", ops
