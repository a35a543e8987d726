"""The SAE training loop: any iterator of activation batches in, trained SAEs out.

``train_sae(sae, batches, total_steps=20_000, lr=2e-4)`` trains one SAE on an iterable of
``[n, d_in]`` tensors (``(x, target)`` pairs for a transcoder); ``train_saes({hook: sae},
dict_batches)`` trains several in one pass over the data, each on its own hook's
activations (``batch[sae.cfg.hook_name]``, else ``batch[name]``; transcoders also read
``batch[sae.cfg.hook_name_out]``; see `train_member.Member`). The activation store yields
exactly these.

Each step, for each SAE: the loss (`SAE.training_loss`) with the sparsity coefficient's
warm-up factor and the dead-latent mask; backward; for unit-norm decoders the gradient
component along each row is removed; gradient clipping; Adam; decoder rows renormalised;
firing statistics updated; dead latents optionally resampled. The first batch sets up
what depends on data: the input normalisation factor (taken from a source that
normalises, ``source.scaling_factors``, else estimated when the config asks for one) and
b_dec at the geometric median.

Exact resume: the learning rate and warm-up are functions of the step; checkpoints hold
the SAEs, Adam's moments, firing statistics, generator states and the source's
position (its ``state_dict()`` when it has one; otherwise a fresh iterable is advanced
past the batches already used). On CPU an interrupted and resumed run reproduces the
uninterrupted one bit for bit. Ctrl-C stops after the current step with a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from lmscope.allocator import kept_freed_memory
from lmscope.sae.base import SAE, SAEError
from lmscope.sae.checkpoint import (
    latest_training_checkpoint,
    restore_trainer,
    sae_dirname,
    save_training_checkpoint,
    trainer_state,
)
from lmscope.sae.data_init import initialise_from_batch
from lmscope.sae.resample import resample_dead_latents
from lmscope.sae.train_config import SAETrainConfig, learning_rate, sparsity_scale
from lmscope.sae.train_log import ProgressView, metrics_line, short_summary
from lmscope.sae.train_member import Member
from lmscope.serialization import write_safetensors
from lmscope.train.log import MetricsLog
from lmscope.train.trainer import _graceful_interrupt


@dataclass
class SAETrainResult:
    """How a training run ended."""

    saes: dict[str, SAE]
    steps: int
    tokens: int
    elapsed_s: float
    metrics: dict[str, dict[str, float]]  # the last logged line of each SAE
    out: Path | None
    interrupted: bool
    resampled: int

    @property
    def sae(self) -> SAE:
        """The SAE, when one was trained."""
        if len(self.saes) != 1:
            raise SAEError(f"{len(self.saes)} SAEs were trained; pick one from .saes.")
        return next(iter(self.saes.values()))


class SAETrainer:
    """Trains `saes` (name -> SAE) on `activations`; `fit()` runs to the end."""

    def __init__(
        self,
        saes: Mapping[str, SAE],
        activations: Iterable[Any],
        config: SAETrainConfig,
        *,
        out: str | Path | None = None,
        resume: bool = True,
        progress: bool = False,
        console: Console | None = None,
        on_step: Callable[[SAETrainer], None] | None = None,
        save_into_out: bool = False,
    ) -> None:
        """`save_into_out`: save a single SAE into `out` itself, not ``out/<name>/``."""
        if not saes:
            raise SAEError("no SAEs to train.")
        self.cfg, self.source, self.on_step = config, activations, on_step
        self.out = Path(out) if out is not None else None
        first = next(iter(saes.values()))
        self.device = torch.device(config.device) if config.device else first.W_enc.device
        self.members = [
            Member(name, sae.to(self.device).train(), config) for name, sae in saes.items()
        ]
        self.step = self.tokens = self.batches = self.resampled = 0
        self.elapsed = 0.0
        self.total_steps: int | None = config.total_steps
        self.generator = torch.Generator().manual_seed(config.seed)
        log_path = (self.out or Path(".")) / "metrics.jsonl"
        self.log = MetricsLog(log_path, enabled=self.out is not None)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._iter: Iterator[Any] | None = None
        self._stop = False
        self._show_progress, self._console = progress, console
        self._flat = save_into_out and len(self.members) == 1
        if self.out is not None and resume:
            self._resume()

    # --- data ------------------------------------------------------------------------------
    def _next_batch(self) -> Any:
        if self._iter is None:
            self._iter = iter(self.source)
        batch = next(self._iter)
        self.batches += 1
        return batch

    def _initialise(self, batch: Any) -> None:
        """Set up what depends on data (normalisation, b_dec), from the first batch."""
        for m in self.members:
            x, target = m.split(batch)
            m.prescaled = initialise_from_batch(
                m.sae,
                x,
                target,
                input_key=m.input_key(batch),
                source=self.source,
                median_init=self.cfg.geometric_median_init,
            )

    # --- one step --------------------------------------------------------------------------
    def train_step(self, batch: Any) -> None:
        """One optimizer step of every SAE on `batch`."""
        lr = learning_rate(self.step, self.cfg, self.total_steps)
        scale = sparsity_scale(self.step, self.cfg)
        resample = self.cfg.resample_dead and (self.step + 1) % self.cfg.resample_every_steps == 0
        rows = 0
        for m in self.members:
            x, target = m.split(batch)
            x = x.to(self.device, non_blocking=True)
            target = None if target is None else target.to(self.device, non_blocking=True)
            rows = x.shape[0]
            for group in m.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            dead = m.tracker.dead_mask(self.cfg.dead_after_tokens)
            out = m.sae.training_loss(
                x, target, sparsity_scale=scale, dead_mask=dead, prescaled=m.prescaled
            )
            out.total.backward()
            if m.sae.cfg.normalize_decoder:
                m.sae.remove_gradient_parallel_to_decoder_directions()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(m.sae.parameters(), self.cfg.grad_clip)
            m.optimizer.step()
            m.optimizer.zero_grad(set_to_none=True)
            if m.sae.cfg.normalize_decoder:
                m.sae.normalize_decoder_()
            m.tracker.update(out.firing_counts, rows)
            m.last = out
            if resample:
                dead = m.tracker.dead_mask(self.cfg.dead_after_tokens)
                x_n = m.sae.normalize_input(x, prescaled=m.prescaled)
                self.resampled += resample_dead_latents(
                    m.sae, m.optimizer, dead, x_n, out.target, self.generator
                )
                m.tracker.revive(dead)
        self.step += 1
        self.tokens += rows

    # --- the loop ----------------------------------------------------------------------------
    def done(self) -> bool:
        """Whether a stop criterion is met."""
        c = self.cfg
        return (self.total_steps is not None and self.step >= self.total_steps) or (
            c.total_tokens is not None and self.tokens >= c.total_tokens
        )

    def request_stop(self) -> None:
        """Stop after the current step (with a checkpoint)."""
        self._stop = True

    def fit(self) -> SAETrainResult:
        """Train until done, the data ends, or a stop request; returns how it ended."""
        self.view = ProgressView(self._show_progress, self.total_steps, self.step, self._console)
        window_s, window_rows = 0.0, 0
        keep = self.cfg.keep_freed_memory and self.device.type == "cpu"
        with self.view.context(), _graceful_interrupt(self.request_stop), kept_freed_memory(keep):
            while not self.done() and not self._stop:
                started, tokens_before = time.perf_counter(), self.tokens
                try:
                    batch = self._next_batch()
                except StopIteration:
                    break
                if self.step == 0:
                    self._initialise(batch)
                    if self.total_steps is None and self.cfg.total_tokens is not None:
                        rows = self.members[0].split(batch)[0].shape[0]
                        self.total_steps = math.ceil(self.cfg.total_tokens / rows)
                self.train_step(batch)
                seconds = time.perf_counter() - started
                self.elapsed += seconds
                window_s += seconds
                window_rows += self.tokens - tokens_before
                if self.step % self.cfg.log_every == 0 or self.done():
                    self._log(window_rows / max(window_s, 1e-9))
                    window_s, window_rows = 0.0, 0
                every = self.cfg.checkpoint_every
                if self.out is not None and every is not None and self.step % every == 0:
                    self.checkpoint()
                if self.on_step is not None:
                    self.on_step(self)
        interrupted = self._stop and not self.done()
        for m in self.members:
            m.sae.eval()  # e.g. BatchTopK switches to its learned threshold
        if self.out is not None and self.step > 0:
            if interrupted or self.cfg.checkpoint_every is not None:
                self.checkpoint()
            if not interrupted:
                self._save_final()
        return SAETrainResult(
            {m.name: m.sae for m in self.members},
            self.step,
            self.tokens,
            self.elapsed,
            dict(self.last_metrics),
            self.out,
            interrupted,
            self.resampled,
        )

    # --- logging, checkpoints, results -------------------------------------------------------
    @torch.no_grad()
    def _log(self, acts_per_s: float) -> None:
        last = max(self.step - 1, 0)  # the step just taken
        lr, scale = learning_rate(last, self.cfg, self.total_steps), sparsity_scale(last, self.cfg)
        shown = []
        for m in self.members:
            if m.last is None:
                continue
            line = metrics_line(
                m.last,
                m.tracker,
                self.cfg.dead_after_tokens,
                step=self.step,
                sae=m.name,
                tokens=self.tokens,
                lr=lr,
                sparsity_scale=scale,
                acts_per_s=acts_per_s,
            )
            m.density = m.tracker.density()  # of the window this line covers
            m.tracker.reset_window()
            self.log.write(**line)
            self.last_metrics[m.name] = line
            shown.append(short_summary(m.name if len(self.members) > 1 else "", line))
        self.view.update(self.step, self.total_steps, " | ".join(shown))

    def checkpoint(self) -> Path:
        """Write a checkpoint of the current step into ``out/checkpoints``."""
        if self.out is None:
            raise SAEError("checkpoints need an output directory (out=...).")
        saes = {m.name: m.sae for m in self.members}
        return save_training_checkpoint(
            self.out, self.step, saes, trainer_state(self), self.cfg.keep_checkpoints
        )

    def _resume(self) -> None:
        assert self.out is not None
        path = latest_training_checkpoint(self.out)
        if path is not None:
            restore_trainer(self, path)
            self.log.truncate_after(self.step)

    def _save_final(self) -> None:
        assert self.out is not None
        for m in self.members:
            directory = self.out if self._flat else self.out / sae_dirname(m.name)
            summary = {k: v for k, v in self.last_metrics.get(m.name, {}).items() if k != "sae"}
            summary.update(steps=self.step, tokens=self.tokens, elapsed_s=self.elapsed)
            m.sae.save(directory, extra=summary)
            # the window since the last log line, else the last line's
            density = m.tracker.density() if m.tracker.window_inputs else m.density
            write_safetensors(
                {"density": density.float()}, directory / "feature_density.safetensors"
            )


def _config(config: SAETrainConfig | None, settings: dict[str, Any]) -> SAETrainConfig:
    config = config or SAETrainConfig()
    return config.replace(**settings) if settings else config


def train_saes(
    saes: Mapping[str, SAE],
    activations: Iterable[Mapping[str, Tensor]],
    config: SAETrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    console: Console | None = None,
    on_step: Callable[[SAETrainer], None] | None = None,
    **settings: Any,
) -> SAETrainResult:
    """Train several SAEs in one pass over `activations` (dicts of hook -> ``[n, d]``).

    `settings` override fields of `config` (`SAETrainConfig`). With `out`, metrics go to
    ``out/metrics.jsonl``, checkpoints to ``out/checkpoints`` (and are resumed from
    when `resume`), and each SAE to ``out/<name>/``.
    """
    trainer = SAETrainer(
        saes,
        activations,
        _config(config, settings),
        out=out,
        resume=resume,
        progress=progress,
        console=console,
        on_step=on_step,
    )
    return trainer.fit()


def train_sae(
    sae: SAE,
    activations: Iterable[Tensor | tuple[Tensor, Tensor]],
    config: SAETrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    console: Console | None = None,
    on_step: Callable[[SAETrainer], None] | None = None,
    **settings: Any,
) -> SAETrainResult:
    """Train one SAE on `activations`: ``[n, d_in]`` batches (``(x, target)`` for transcoders).

    As `train_saes`, with the SAE saved into `out` itself.
    """
    trainer = SAETrainer(
        {sae.cfg.hook_name or "sae": sae},
        activations,
        _config(config, settings),
        out=out,
        resume=resume,
        progress=progress,
        console=console,
        on_step=on_step,
        save_into_out=True,
    )
    return trainer.fit()
