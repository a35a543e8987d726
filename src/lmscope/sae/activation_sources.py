"""Where an activation store's rows come from: the model over token windows, or a disk cache.

Both producers yield *chunks*: dicts hook -> [rows, d] with rows aligned across hooks,
and keep a position (epoch, index) that advances as chunks are produced, so that a store
can save it and resume exactly.

- `ModelActivations`: one `run_with_cache` per batch of windows, stopping after the
  last block the hooks need (`stop_layer`); positions holding special tokens are left
  out (`special_position_mask`).
- `CachedActivations`: row ranges of a `DiskActivations` cache in a seeded order.
- `cache_activations`: one pass of the model over a source, written to disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookedModule
from lmscope.sae.disk_cache import DEFAULT_SHARD_ROWS, DiskActivations, write_activation_cache
from lmscope.sae.token_source import TokenSourceLike, TokenWindows
from lmscope.tokenizers import Tokenizer


class ActivationStoreError(LmscopeError, ValueError):
    """Activation-store settings that cannot work (sizes, hooks, normalisation...)."""


def stop_layer(model: HookedModule, hook_names: Sequence[str]) -> int | None:
    """The block index to stop before so that every hook in `hook_names` has fired.

    ``blocks.{i}....`` needs blocks up to i; embedding hooks need none (0); anything else
    (the final norm) needs the whole model (None).
    """
    needed = 0
    for name in hook_names:
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            needed = max(needed, int(match.group(1)) + 1)
        elif not name.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
            return None
    return needed


def special_position_mask(
    tokens: Int[Tensor, "batch pos"], excluded_ids: Sequence[int]
) -> torch.Tensor:
    """Bool [batch, pos]: True at positions whose token is not one of `excluded_ids`."""
    if not excluded_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(list(excluded_ids), device=tokens.device))


class ModelActivations:
    """Raw activations of token windows, chunk by chunk: one model forward per chunk.

    `position` (epoch, window) says where the next chunk starts; it advances as chunks
    are produced, so it can be saved and restored for an exact resume.
    """

    def __init__(
        self,
        model: HookedModule,
        windows: TokenWindows,
        hook_names: list[str],
        n_contexts: int,
        excluded_ids: Sequence[int],
        dtype: torch.dtype,
    ) -> None:
        unknown = [h for h in hook_names if h not in model.hook_points()]
        if unknown:
            model.resolve_hooks(unknown[0])  # raises with a did-you-mean
        self.model, self.windows, self.hook_names = model, windows, hook_names
        self.n_contexts, self.excluded_ids, self.dtype = n_contexts, list(excluded_ids), dtype
        self.stop = stop_layer(model, hook_names)
        self.epoch = 0
        self.window = 0

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def activations(
        self, tokens: Int[Tensor, "batch pos"]
    ) -> dict[str, Float[Tensor, "batch pos d"]]:
        """Activations of each hook for `tokens`, computing only the blocks they need."""
        _, cache = self.model.run_with_cache(
            tokens.to(self.device), names_filter=self.hook_names, stop_at_layer=self.stop
        )
        return {h: cache[h] for h in self.hook_names}

    def chunks(self, loop: bool) -> Iterator[dict[str, Tensor]]:
        """Kept rows (special positions dropped) of each hook, one model batch at a time."""
        while True:
            produced = False
            for tokens in self.windows.batches(self.n_contexts, start=self.window):
                produced = True
                self.window += tokens.shape[0]
                keep = special_position_mask(tokens, self.excluded_ids).reshape(-1)
                acts = self.activations(tokens)
                yield {
                    h: a.reshape(-1, a.shape[-1])[keep.to(a.device)].to(self.dtype)
                    for h, a in acts.items()
                }
            if not loop:
                return
            if not produced and self.window == 0:
                raise ActivationStoreError(
                    "the token source holds less than one context of tokens "
                    f"(context_size {self.windows.context_size})."
                )
            self.epoch, self.window = self.epoch + 1, 0

    def state(self) -> dict[str, int]:
        """Where the next chunk starts."""
        return {"epoch": self.epoch, "position": self.window}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()`."""
        self.epoch, self.window = int(state["epoch"]), int(state["position"])


class CachedActivations:
    """Activations read back from a disk cache, in a seeded shuffled order of chunks."""

    def __init__(
        self, cache: DiskActivations, hook_names: list[str], chunk_rows: int, seed: int
    ) -> None:
        cache.check_hooks(hook_names)
        self.cache, self.hook_names, self.chunk_rows, self.seed = (
            cache,
            hook_names,
            chunk_rows,
            seed,
        )
        self.epoch = 0
        self.chunk = 0

    def chunks(self, loop: bool) -> Iterator[dict[str, Tensor]]:
        """Chunks of `chunk_rows` rows, every shard mixed, a new order each epoch."""
        while True:
            for chunk in self.cache.chunks(
                self.hook_names, self.chunk_rows, self.epoch, self.seed, self.chunk
            ):
                self.chunk += 1
                yield chunk
            if not loop:
                return
            self.epoch, self.chunk = self.epoch + 1, 0

    def state(self) -> dict[str, int]:
        """Where the next chunk starts."""
        return {"epoch": self.epoch, "position": self.chunk}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()`."""
        self.epoch, self.chunk = int(state["epoch"]), int(state["position"])


def model_activations(
    model: HookedModule,
    tokenizer: Tokenizer | None,
    source: TokenSourceLike,
    hook_names: list[str],
    *,
    context_size: int = 128,
    batch_size_tokens: int = 4096,
    exclude_special: bool | Sequence[int] = True,
    prepend_bos: bool = False,
    dtype: torch.dtype = torch.float32,
    split: str = "train",
) -> ModelActivations:
    """The raw-activation producer for `source` (arguments as `ActivationStore`'s)."""
    windows = TokenWindows(source, tokenizer, context_size, prepend_bos=prepend_bos, split=split)
    if exclude_special is True:
        excluded = windows.special_ids
    elif exclude_special is False:
        excluded = []
    else:
        excluded = [int(i) for i in exclude_special]
    n_contexts = max(1, batch_size_tokens // context_size)
    return ModelActivations(model, windows, hook_names, n_contexts, excluded, dtype)


def cache_activations(
    model: HookedModule,
    tokenizer: Tokenizer | None,
    source: TokenSourceLike,
    hook_names: str | Sequence[str],
    out_dir: str | Path,
    *,
    n_tokens: int | None = None,
    context_size: int = 128,
    batch_size_tokens: int = 4096,
    exclude_special: bool | Sequence[int] = True,
    prepend_bos: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    split: str = "train",
) -> dict[str, Any]:
    """Run `model` over `source` once and write the activations to `out_dir` (sharded).

    Stops after `n_tokens` rows (default: the whole source, one pass). Returns the
    manifest; ``ActivationStore(None, None, out_dir, hook_names)`` reads it back.
    """
    producer = model_activations(
        model,
        tokenizer,
        source,
        [hook_names] if isinstance(hook_names, str) else list(hook_names),
        context_size=context_size,
        batch_size_tokens=batch_size_tokens,
        exclude_special=exclude_special,
        prepend_bos=prepend_bos,
        dtype=dtype,
        split=split,
    )

    def limited() -> Iterator[dict[str, Tensor]]:
        written = 0
        for chunk in producer.chunks(loop=False):
            rows = next(iter(chunk.values())).shape[0]
            if n_tokens is not None and written + rows >= n_tokens:
                yield {h: t[: n_tokens - written] for h, t in chunk.items()}
                return
            written += rows
            yield chunk

    info = {"source": producer.windows.describe(), "stop_at_layer": producer.stop}
    return write_activation_cache(
        limited(), out_dir, shard_rows=shard_rows, dtype=dtype, info=info, overwrite=overwrite
    )


def hook_widths(producer: ModelActivations) -> dict[str, int]:
    """Each hook's activation width, from one forward on a single window of zeros."""
    probe = torch.zeros(1, producer.windows.context_size, dtype=torch.long)
    return {h: int(a.shape[-1]) for h, a in producer.activations(probe).items()}


__all__ = [
    "ActivationStoreError",
    "CachedActivations",
    "ModelActivations",
    "cache_activations",
    "hook_widths",
    "model_activations",
    "special_position_mask",
    "stop_layer",
]
