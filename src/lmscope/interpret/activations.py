"""Activations over a dataset: a few hook points, pooled per sequence or per token.

`collect_activations` streams batches through ``model.run_with_cache`` with a names filter, so
only the asked-for hook points are recorded, and stops the forward pass after the last
block that holds one of them. Each batch is pooled (last token, mean over tokens, every
token, or a mask) and moved to `device` before the next batch runs, so memory grows with
the pooled result, not with the model's activations over the whole dataset.

Batches may be ragged: lists of token-id lists are left-padded and masked, and padding
never enters a pooled value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.generate.prompts import Prompts, left_pad, prompt_rows
from lmscope.hooks import HookedModule
from lmscope.interpret.patching import progress_bar

#: One batch: token ids [batch, pos] (no padding), (tokens, attention_mask), or a list of
#: token-id lists of any lengths (left-padded here).
TokenBatch = Tensor | tuple[Tensor, Tensor] | Sequence[Sequence[int]]
#: How a batch's positions become rows: "last" real token, "mean" over real tokens,
#: "all" real tokens (one row each), a column index, or one bool mask per batch.
Positions = Literal["last", "mean", "all"] | int | Sequence[Tensor]

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _as_batch(batch: TokenBatch, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """A batch as (tokens [batch, pos], attention mask or None) on `device`."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor):
        tokens, mask = batch
        if not isinstance(mask, Tensor) or mask.shape != tokens.shape:
            raise LmscopeError(
                "a (tokens, attention_mask) batch needs a mask tensor of the tokens' shape."
            )
        return tokens.to(device), mask.to(device)
    if isinstance(batch, Tensor):
        if batch.dim() != 2 or batch.dtype.is_floating_point:
            raise LmscopeError(
                f"a token batch tensor must hold integer ids [batch, pos]; got "
                f"{batch.dtype} of shape {list(batch.shape)}."
            )
        return batch.to(device), None
    rows = prompt_rows(batch)  # checks ids and non-empty rows
    return left_pad(rows, 0, device)  # the pad id is masked out, so any id will do


def last_positions(tokens: Int[Tensor, "batch pos"], mask: Tensor | None) -> Int[Tensor, " batch"]:
    """Index of each row's last real token (left or right padding alike)."""
    if mask is None:
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
    real = mask.bool()
    if not bool(real.any(1).all()):
        raise LmscopeError("a batch row is all padding; every sequence needs a real token.")
    return tokens.shape[1] - 1 - real.flip(1).long().argmax(1)


def pool(
    act: Float[Tensor, "batch pos *rest"],
    tokens: Int[Tensor, "batch pos"],
    mask: Tensor | None,
    positions: Literal["last", "mean", "all"] | int | Bool[Tensor, "batch pos"],
) -> Float[Tensor, "rows ..."]:
    """The rows that `positions` selects from one batch's activation."""
    batch, n_pos = tokens.shape
    real = mask.bool() if mask is not None else torch.ones_like(tokens, dtype=torch.bool)
    if isinstance(positions, Tensor):
        if positions.shape != tokens.shape or positions.dtype != torch.bool:
            raise LmscopeError(
                f"a positions mask must be a bool tensor of the batch's shape "
                f"{list(tokens.shape)}; got {positions.dtype} {list(positions.shape)}."
            )
        return act[positions.to(act.device) & real]
    if positions == "last":
        return act[torch.arange(batch, device=act.device), last_positions(tokens, mask)]
    if positions == "all":
        return act[real]
    if positions == "mean":
        keep = real.reshape(batch, n_pos, *([1] * (act.dim() - 2)))
        # where, not a product: padding's activations are never used, and may be NaN.
        return torch.where(keep, act, 0).sum(1) / keep.sum(1).to(act.dtype)
    if isinstance(positions, int) and not isinstance(positions, bool):
        if not -n_pos <= positions < n_pos:
            raise LmscopeError(f"position {positions} is outside this batch's {n_pos} columns.")
        return act[:, positions]
    raise LmscopeError(
        f"positions={positions!r} is invalid: use 'last', 'mean', 'all', a column index, "
        "or one bool mask [batch, pos] per batch."
    )


def _stop_layer(model: HookedModule, names: Sequence[str]) -> int | None:
    """The block to stop before: one past the last block a hook lives in (None: run all)."""
    layers = []
    for name in names:
        match = _BLOCK.match(name)
        if match is None:  # embedding or final-norm hooks: run the whole model
            return None
        layers.append(int(match.group(1)))
    n = len(getattr(model, "blocks", ()))
    last = max(layers) + 1
    return last if last < n else None


def collect_activations(
    model: HookedModule,
    token_batches: Iterable[TokenBatch],
    hook_names: str | Sequence[str],
    *,
    positions: Positions = "last",
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> dict[str, Tensor]:
    """Activations at `hook_names` over all batches, pooled per `positions`, concatenated.

    Returns ``{hook name: tensor [rows, *rest]}``, where a hook's activation is
    ``[batch, pos, *rest]`` and rows are sequences ("last", "mean", an int column) or
    selected tokens ("all", masks), in batch order. Runs under ``no_grad`` in the model's
    current mode (call ``model.eval()`` first to switch dropout off). `progress`: a bar on
    stderr (None: only on a terminal).
    """
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    if not names:
        raise LmscopeError("hook_names is empty; name at least one hook point.")
    for name in names:
        model.resolve_hooks(name)  # an unknown name fails here, with a did-you-mean
    masks: Sequence[Tensor] | None = None
    if not isinstance(positions, str | int):
        masks = list(positions)
    stop = _stop_layer(model, names)
    model_device = next(model.parameters()).device
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    batches = list(token_batches)  # token ids only (small); gives the bar its total
    if masks is not None and len(masks) != len(batches):
        raise LmscopeError(f"positions has {len(masks)} masks for {len(batches)} batches.")
    with progress_bar(len(batches), "activations", progress) as advance:
        for i, batch in enumerate(batches):
            tokens, mask = _as_batch(batch, model_device)
            _, cache = model.run_with_cache(
                tokens, names_filter=names, stop_at_layer=stop, attention_mask=mask
            )
            where: Any = masks[i] if masks is not None else positions
            for name in names:
                act = cache[name]
                if act.dim() < 2 or act.shape[:2] != tokens.shape:
                    raise LmscopeError(
                        f"{name} has shape {list(act.shape)}, not [batch, pos, ...]; "
                        "collect_activations pools hooks with a position axis."
                    )
                parts[name].append(pool(act, tokens, mask, where).to(device))
            advance(1)
    if not parts[names[0]]:
        raise LmscopeError("token_batches is empty; give at least one batch.")
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def prompt_batches(
    prompts: Prompts, tokenizer: Any | None, batch_size: int = 16
) -> list[list[list[int]]]:
    """Texts (encoded with `tokenizer`) or token ids, in ragged batches of `batch_size`.

    Accepts what `generate` accepts as prompts; the batches go to `collect_activations`.
    """
    if batch_size < 1:
        raise LmscopeError(f"batch_size={batch_size} must be >= 1.")
    rows = prompt_rows(prompts, tokenizer)
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


__all__ = [
    "Positions",
    "TokenBatch",
    "collect_activations",
    "last_positions",
    "pool",
    "prompt_batches",
]
