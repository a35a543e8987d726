"""The activation store: text in, shuffled batches of activations out, in bounded memory.

An SAE trains on activations of one or more hook points. `ActivationStore` streams token
windows (`TokenWindows`) through the model, stopping after the last block a hook needs
(`run_with_cache(stop_at_layer=...)`: later blocks never run), drops the positions of
special tokens (BOS, EOS, padding), and feeds a *mixing buffer*: consecutive tokens
are highly correlated, so batches are drawn from a shuffled buffer that is refilled
by half each time, as in SAELens (Bloom et al.). Memory is the buffer
(``buffer_tokens`` rows plus one model batch), whatever the corpus size.

Several hooks share one buffer (their activations are concatenated along the feature
axis), so row i of each hook's batch comes from the same token; transcoders need that.

Activations can come from a disk cache instead of the model (`cache_activations`
writes one, `source=` its directory reads it, memory-mapped, in shuffled chunks).

``normalize="expected_average_only_in"`` scales each hook's activations by one factor so
that their mean norm is ``sqrt(d_in)`` (Anthropic's April 2024 update; SAELens's option
of the same name), estimated on the first buffer fill. The factors are in
`scaling_factors`; folding them into the SAE after training (the SAE's
``fold_activation_norm_scaling_factor``) makes it work on raw activations again.

`state_dict` / `load_state_dict` capture everything (read position, buffer rows, the
shuffling generator, factors), so a resumed trainer sees exactly the batches it would
have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.hooks import HookedModule
from lmscope.sae.activation_sources import (
    ActivationStoreError,
    CachedActivations,
    ModelActivations,
    cache_activations,
    hook_widths,
    model_activations,
)
from lmscope.sae.disk_cache import DiskActivations, is_activation_cache
from lmscope.sae.token_source import TokenSourceLike
from lmscope.tokenizers import Tokenizer

Normalize = Literal["expected_average_only_in"] | None
_NORMALIZE = ("expected_average_only_in", None)


class ActivationStore:
    """Shuffled batches of activations at `hook_names`, from text or a disk cache.

    - `model`, `tokenizer`, `source`: what to run on what (see `TokenWindows` for the
      sources); `source` may also be an activation-cache directory (then `model` may be
      None).
    - `context_size`: tokens per window; `batch_size_tokens`: tokens per model forward
      (rounded down to whole windows); `store_batch_size`: rows per batch served;
      `buffer_tokens`: rows of the mixing buffer (half is served per refill).
    - `normalize`: None, or "expected_average_only_in" (mean norm sqrt(d) per hook).
    - `exclude_special`: leave out positions holding special tokens: True (the
      tokenizer's), False, or explicit ids. `prepend_bos`: start every window with BOS.
    - `loop`: start over when the data ends (else iteration stops).
    - `device`: where batches go (default: the model's device, or cpu); `dtype`: of the
      rows kept (float32 by default, also for bf16 models).

    Iterating yields a tensor [store_batch_size, d] for one hook, a dict hook -> tensor
    for several (`next_batch_dict` always gives the dict).
    """

    def __init__(
        self,
        model: HookedModule | None,
        tokenizer: Tokenizer | None,
        source: TokenSourceLike,
        hook_names: str | Sequence[str],
        *,
        context_size: int = 128,
        batch_size_tokens: int = 4096,
        store_batch_size: int = 4096,
        buffer_tokens: int = 1 << 16,
        seed: int = 0,
        normalize: Normalize = None,
        exclude_special: bool | Sequence[int] = True,
        prepend_bos: bool = False,
        loop: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        split: str = "train",
    ) -> None:
        self.hook_names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
        if not self.hook_names:
            raise ActivationStoreError("hook_names is empty: name at least one hook point.")
        if normalize not in _NORMALIZE:
            raise ActivationStoreError(
                f"normalize={normalize!r} is not supported: use None or 'expected_average_only_in'."
            )
        for name, value in (
            ("store_batch_size", store_batch_size),
            ("batch_size_tokens", batch_size_tokens),
        ):
            if value < 1:
                raise ActivationStoreError(f"{name} must be positive, got {value}.")
        if buffer_tokens < 2 * store_batch_size:
            raise ActivationStoreError(
                f"buffer_tokens ({buffer_tokens}) must be at least twice store_batch_size "
                f"({store_batch_size}): half the buffer is kept for mixing at each refill."
            )
        self.store_batch_size, self.buffer_tokens = store_batch_size, buffer_tokens
        self.normalize, self.loop, self.seed = normalize, loop, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.producer: ModelActivations | CachedActivations
        if isinstance(source, (str, Path)) and is_activation_cache(source):
            self.producer = CachedActivations(
                DiskActivations(source), self.hook_names, batch_size_tokens, seed
            )
            self.d_in = {h: self.producer.cache.hooks[h] for h in self.hook_names}
            default_device: torch.device = torch.device("cpu")
        else:
            if model is None:
                raise ActivationStoreError(
                    "a model is needed to compute activations (model=None reads only an "
                    "activation-cache directory, and this source is not one)."
                )
            self.producer = model_activations(
                model,
                tokenizer,
                source,
                self.hook_names,
                context_size=context_size,
                batch_size_tokens=batch_size_tokens,
                exclude_special=exclude_special,
                prepend_bos=prepend_bos,
                dtype=dtype,
                split=split,
            )
            self.d_in = hook_widths(self.producer)
            default_device = self.producer.device
        self.device = torch.device(device) if device is not None else default_device
        self.widths = [self.d_in[h] for h in self.hook_names]
        #: Per hook: the factor activations are multiplied by (None until estimated).
        self.scaling_factors: dict[str, float] | None = None
        self._buffer = torch.zeros(0, sum(self.widths), device=self.device, dtype=dtype)
        self._served = 0  # rows of the buffer served since the last refill
        self._servable = 0  # rows that may be served before the next refill
        self._chunks: Iterator[dict[str, Tensor]] | None = None
        self._exhausted = False
        #: Most rows the buffer has held at once: the store's memory, whatever the corpus.
        self.peak_buffer_rows = 0

    # --- serving --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Tensor | dict[str, Tensor]]:
        return self

    def __next__(self) -> Tensor | dict[str, Tensor]:
        batch = self.next_batch_dict()
        return batch[self.hook_names[0]] if len(self.hook_names) == 1 else batch

    def next_batch(self) -> Tensor | dict[str, Tensor]:
        """The next batch: [store_batch_size, d] for one hook, else a dict of them."""
        return next(self)

    def next_batch_dict(self) -> dict[str, Float[Tensor, "batch d"]]:
        """The next batch as hook -> [store_batch_size, d] (normalised if asked)."""
        if self._servable - self._served < self.store_batch_size:
            self._refill()
            if self._servable - self._served < self.store_batch_size:
                raise StopIteration
        rows = self._buffer[self._served : self._served + self.store_batch_size]
        self._served += self.store_batch_size
        parts = rows.split(self.widths, dim=1)
        factors = self.scaling_factors or {}
        return {
            h: p * factors[h] if h in factors else p
            for h, p in zip(self.hook_names, parts, strict=True)
        }

    def _refill(self) -> None:
        """Top the buffer up to `buffer_tokens` rows, shuffle it, and serve all but half."""
        rest = self._buffer[self._served :]
        pieces = [rest] if rest.numel() else []
        n = rest.shape[0]
        if self._chunks is None:
            self._chunks = self.producer.chunks(self.loop)
        while n < self.buffer_tokens and not self._exhausted:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._exhausted = True
                break
            packed = torch.cat([chunk[h] for h in self.hook_names], dim=1).to(self.device)
            pieces.append(packed.to(self._buffer.dtype))
            n += packed.shape[0]
        self._buffer = torch.cat(pieces) if pieces else self._buffer[:0]
        self.peak_buffer_rows = max(self.peak_buffer_rows, self._buffer.shape[0])
        order = torch.randperm(self._buffer.shape[0], generator=self.generator)
        self._buffer = self._buffer[order.to(self.device)]
        if self.normalize is not None and self.scaling_factors is None:
            self.scaling_factors = self._estimate_factors(self._buffer)
        # Keep half the buffer back for mixing with the next refill; at the end, serve all.
        keep = 0 if self._exhausted else self.buffer_tokens // 2
        servable = max(0, self._buffer.shape[0] - keep)
        self._servable = servable - servable % self.store_batch_size
        self._served = 0

    def _estimate_factors(self, rows: Tensor) -> dict[str, float]:
        """sqrt(d) / mean norm, per hook, over `rows` (raw, packed)."""
        if rows.shape[0] == 0:
            raise ActivationStoreError("no activations to estimate the normalisation from.")
        factors = {}
        for h, part in zip(self.hook_names, rows.split(self.widths, dim=1), strict=True):
            mean_norm = float(part.float().norm(dim=1).mean())
            if mean_norm == 0.0:
                raise ActivationStoreError(f"activations at {h} are all zero: cannot normalise.")
            factors[h] = self.d_in[h] ** 0.5 / mean_norm
        return factors

    # --- normalisation ---------------------------------------------------------------------
    def estimate_norm_scaling_factors(self) -> dict[str, float]:
        """The normalisation factors, estimating them now (first buffer fill) if needed."""
        if self.scaling_factors is None:
            if self.normalize is None:
                raise ActivationStoreError("this store does not normalise (normalize=None).")
            self._refill()
        assert self.scaling_factors is not None
        return dict(self.scaling_factors)

    def unscale(self, x: Tensor, hook_name: str | None = None) -> Tensor:
        """Undo the normalisation of `x` (activations of `hook_name`, default the first)."""
        name = hook_name or self.hook_names[0]
        factor = (self.scaling_factors or {}).get(name)
        return x if factor is None else x / factor

    # --- exact resume ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with exactly the same batches (buffer included)."""
        return {
            "hook_names": list(self.hook_names),
            "producer": self.producer.state(),
            "exhausted": self._exhausted,
            "buffer": self._buffer[self._served :].cpu().clone(),
            "servable": self._servable - self._served,
            "generator": self.generator.get_state(),
            "scaling_factors": dict(self.scaling_factors) if self.scaling_factors else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict` of a store built with the same arguments."""
        if list(state["hook_names"]) != self.hook_names:
            raise ActivationStoreError(
                f"this state is for hooks {state['hook_names']}, the store reads {self.hook_names}."
            )
        self.producer.restore(state["producer"])
        self._chunks = None
        self._exhausted = bool(state["exhausted"])
        self._buffer = state["buffer"].to(self.device, self._buffer.dtype)
        self._served, self._servable = 0, int(state["servable"])
        self.generator.set_state(state["generator"])
        factors = state["scaling_factors"]
        self.scaling_factors = dict(factors) if factors else None


__all__ = ["ActivationStore", "ActivationStoreError", "Normalize", "cache_activations"]
