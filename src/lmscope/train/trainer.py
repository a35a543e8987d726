"""The training loop: sample, forward, backward, step, evaluate, checkpoint, repeat.

Exactness on resume comes from three things: the learning rate is a pure function of
the step; every random draw (batches, masks, dropout) comes from generators whose
states are checkpointed; and checkpoints are only taken between optimizer steps. On CPU
an interrupted and resumed run reproduces the uninterrupted one bit for bit.

Ctrl-C asks the loop to stop at the end of the current step, write a checkpoint and
return; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.model import build_model
from lmscope.train import distributed as dist_
from lmscope.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmscope.train.log import MetricsLog, plot_losses
from lmscope.train.objectives import Batch, loss_sum
from lmscope.train.optim import learning_rate, make_optimizer, set_learning_rate
from lmscope.train.peak import device_peak_flops
from lmscope.train.setup import Run


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    steps: int
    tokens: int
    elapsed_s: float
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    interrupted: bool
    model_dir: Path | None
    #: Where and how it ran: "cuda:0" / "cpu", "fp32" / "bf16", torch.compile or not.
    device: str
    precision: str
    compiled: bool


def windows_of(x: Tensor, y: Tensor) -> Tensor:
    """The token windows ``[batch, block + 1]`` that an (input, shifted target) pair came from."""
    return torch.cat([x, y[:, -1:]], dim=1)


class Trainer:
    """Trains `run`'s model; `fit()` runs until a stop criterion or an interruption."""

    def __init__(
        self,
        run: Run,
        info: dist_.Dist,
        progress: Any = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.run, self.info, self.cfg = run, info, run.train_config
        self.progress, self.on_step = progress, on_step
        self.log = MetricsLog(run.run_dir / "metrics.jsonl", enabled=info.is_main)
        self.step = self.tokens = 0
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.last_loss: float | None = None
        self._stop_requested = False

        torch.manual_seed(self.cfg.seed)  # the same initial weights on every process
        model = build_model(run.model_config).to(run.device)
        self.data_gen = torch.Generator().manual_seed(self.cfg.seed)
        self.model = dist_.wrap(model, info, self.cfg.fsdp, run.device)
        if run.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self._resume()
        # Dropout draws differ per process (as DDP expects), reproducibly.
        if self.step == 0:
            torch.manual_seed(self.cfg.seed + 1 + info.rank)

        self.train_tokens = run.data.split("train")
        self.val_tokens = run.data.split("val")
        self.flops_per_token = 3 * dist_.unwrap(self.model).flops_per_token(run.block_size)
        dtype = torch.bfloat16 if run.precision == "bf16" else torch.float32
        self.peak = self.cfg.peak_flops or device_peak_flops(run.device, dtype)

    # --- state -------------------------------------------------------------------
    def _resume(self) -> None:
        path = latest_checkpoint(self.run.run_dir)
        if path is None:
            return
        ckpt = load_checkpoint(path)
        dist_.load_full_state(self.model, self.optimizer, ckpt.model_state, ckpt.optimizer_state)
        state = ckpt.trainer_state
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.elapsed, self.best_val = float(state["elapsed"]), state.get("best_val")
        self.last_val = state.get("last_val")
        self.data_gen.set_state(state["data_generator"])
        rng = state["torch_rng"]
        if len(rng) == self.info.world:  # each process gets back its own dropout stream
            torch.set_rng_state(rng[self.info.rank])
        if self.run.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.info.rank], self.run.device)
        self.log.truncate_after(self.step)

    def _trainer_state(self) -> dict[str, Any]:
        rng = [torch.get_rng_state()]
        cuda = (
            [torch.cuda.get_rng_state(self.run.device)] if self.run.device.type == "cuda" else None
        )
        if self.info.enabled:
            rng = _gather(rng[0], self.info)
            cuda = _gather(cuda[0], self.info) if cuda is not None else None
        return {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "last_val": self.last_val,
            "data_generator": self.data_gen.get_state(),
            "torch_rng": rng,
            "cuda_rng": cuda,
            "world": self.info.world,
        }

    def checkpoint(self, val_loss: float | None = None) -> None:
        """Write a checkpoint of the current step (collective under FSDP)."""
        model_state, optim_state = dist_.full_state(self.model, self.optimizer)
        state = self._trainer_state()
        if self.info.is_main:
            save_checkpoint(
                self.run.run_dir,
                self.step,
                self.run.model_config,
                model_state,
                optim_state,
                state,
                save_extra=self.run.tokenizer.save,
                val_loss=val_loss,
                keep_last=self.cfg.keep_last,
            )
        dist_.barrier(self.info)

    def request_stop(self) -> None:
        """Stop after the current step (with a checkpoint)."""
        self._stop_requested = True

    # --- one step ------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.run.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.run.device.type, dtype=torch.bfloat16)

    def _global_batch(self, tokens: Any, generator: torch.Generator) -> Batch:
        from lmscope.data import get_batch

        x, y = get_batch(tokens, self.cfg.batch_size, self.run.block_size, generator)
        return self.run.objective.make(windows_of(x, y), generator)

    def train_step(self) -> float:
        """One optimizer step over the global batch; returns its mean loss."""
        set_learning_rate(self.optimizer, learning_rate(self.step, self.cfg))
        batch = self._global_batch(self.train_tokens, self.data_gen)
        n_targets = batch.n_targets  # over the global batch: every process knows it
        mine = batch.rows(*_bounds(self.info.rows(self.cfg.batch_size)))
        per_micro = self.cfg.batch_size // self.cfg.grad_accum // self.info.world
        micro_batches = [
            mine.rows(i * per_micro, (i + 1) * per_micro) for i in range(self.cfg.grad_accum)
        ]
        model = self.model
        total = 0.0
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext()
            if not last and hasattr(model, "no_sync"):
                sync = model.no_sync()  # DDP: all-reduce gradients once, at the last micro-batch
            with sync, self._autocast():
                logits = self.run.objective.logits(model, micro.to(self.run.device))
                summed = loss_sum(logits, micro.labels.to(self.run.device))
                # Sum over my rows / count over all rows * processes: DDP's gradient mean
                # over processes then equals the gradient of the global mean loss.
                loss = summed / n_targets * self.info.world
                loss = loss + dist_.unwrap(model).aux_loss() / self.cfg.grad_accum
            loss.backward()
            total += float(summed.detach())
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.cfg.batch_size * self.run.block_size
        return dist_.all_sum([total], self.info, self.run.device)[0] / n_targets

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the validation split's fixed evaluation batches."""
        from lmscope.data import iter_eval_batches

        self.model.eval()
        # A fixed generator: the same masks / spans at every evaluation.
        generator = torch.Generator().manual_seed(self.cfg.seed + 12345)
        total = count = 0.0
        rows = self.info.rows(self.cfg.batch_size)
        for x, y in iter_eval_batches(
            self.val_tokens, self.cfg.batch_size, self.run.block_size, self.cfg.eval_batches
        ):
            batch = self.run.objective.make(windows_of(x, y), generator)
            if batch.labels.shape[0] != self.cfg.batch_size:
                continue  # a short last batch would not split over processes
            mine = batch.rows(*_bounds(rows)).to(self.run.device)
            with self._autocast():
                logits = self.run.objective.logits(self.model, mine)
            total += float(loss_sum(logits, mine.labels))
            count += mine.n_targets
        self.model.train()
        total, count = dist_.all_sum([total, count], self.info, self.run.device)
        return total / max(count, 1.0)

    # --- the loop ------------------------------------------------------------------
    def done(self) -> bool:
        """Whether a stop criterion is met."""
        c = self.cfg
        return (
            (c.max_steps is not None and self.step >= c.max_steps)
            or (c.max_tokens is not None and self.tokens >= c.max_tokens)
            or (c.max_minutes is not None and self.elapsed >= 60 * c.max_minutes)
            or (
                c.stop_at_val_loss is not None
                and self.last_val is not None
                and self.last_val <= c.stop_at_val_loss
            )
        )

    def _eval_and_checkpoint(self) -> None:
        self.last_val = self.evaluate()
        if self.best_val is None or self.last_val < self.best_val:
            self.best_val = self.last_val
        self.log.write(
            step=self.step, val_loss=self.last_val, tokens=self.tokens, elapsed_s=self.elapsed
        )
        if self.info.is_main:
            plot_losses(self.log.read(), self.run.run_dir / "loss.png", self.run.run_dir.name)
        self.checkpoint(self.last_val)

    def fit(self) -> TrainResult:
        """Train until done or interrupted; returns how the run ended."""
        interrupted = False
        self.model.train()
        if self.step == 0 and not self.done():
            self._eval_and_checkpoint()  # the untrained baseline (about ln vocab_size)
        # Throughput counts training steps only (not evaluation or checkpointing).
        window_seconds, window_tokens = 0.0, 0
        with _graceful_interrupt(self.request_stop):
            while not self.done() and not self._stop_requested:
                started = time.perf_counter()
                self.last_loss = self.train_step()
                seconds = time.perf_counter() - started
                self.elapsed += seconds
                window_seconds += seconds
                window_tokens += self.cfg.batch_size * self.run.block_size
                if self.step % self.cfg.log_every == 0 or self.done():
                    rate = window_tokens / window_seconds if window_seconds > 0 else 0.0
                    self._log_train(rate)
                    window_seconds, window_tokens = 0.0, 0
                evaluate = self.step % self.cfg.eval_every == 0 or self.done()
                every = self.cfg.checkpoint_every
                if evaluate:
                    self._eval_and_checkpoint()
                elif every is not None and self.step % every == 0:
                    self.checkpoint()
                if self.on_step is not None:
                    self.on_step(self)
            if self._stop_requested and not self.done():
                interrupted = True
                self.checkpoint()
        return TrainResult(
            self.run.run_dir,
            self.step,
            self.tokens,
            self.elapsed,
            self.last_loss,
            self.last_val,
            self.best_val,
            interrupted,
            None,
            str(self.run.device),
            self.run.precision,
            self.run.compile,
        )

    def _log_train(self, tokens_per_s: float) -> None:
        mfu = self.flops_per_token * tokens_per_s / self.peak if self.peak else None
        lr = self.optimizer.param_groups[0]["lr"]
        self.log.write(
            step=self.step,
            loss=self.last_loss,
            lr=lr,
            tokens=self.tokens,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            elapsed_s=self.elapsed,
        )
        if self.progress is not None:
            self.progress(self, tokens_per_s, mfu, lr)


def _bounds(rows: slice) -> tuple[int, int]:
    return rows.start, rows.stop


def _gather(tensor: Tensor, info: dist_.Dist) -> list[Tensor]:
    import torch.distributed as dist

    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, tensor.cpu())
    return out


@contextlib.contextmanager
def _graceful_interrupt(request_stop: Callable[[], None]) -> Any:
    """First Ctrl-C: finish the step and checkpoint. Second: stop now."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        request_stop()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
