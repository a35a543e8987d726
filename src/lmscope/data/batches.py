"""Batches of (input, target) windows read from a token split.

`get_batch` is nanoGPT's: window starts ``torch.randint(n - block_size, (batch,))``
drawn from a generator the caller owns (so saving and restoring its state resumes
exactly), x = tokens[s : s + block], y = tokens[s + 1 : s + 1 + block]. Only the
windows are read from the memmap. `iter_eval_batches` gives the same windows every
time, spread evenly over the split.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.data.read import DataError
from lmscope.data.tokens import TokenArray

Batch = tuple[Int[Tensor, "batch block"], Int[Tensor, "batch block"]]


def _check(n_tokens: int, batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise DataError(
            f"batch_size and block_size must be at least 1, got {batch_size} and {block_size}."
        )
    if block_size + 1 > n_tokens:
        most = f"at most {n_tokens - 1}" if n_tokens > 1 else "none fits"
        raise DataError(
            f"block_size {block_size} is longer than the data: a window needs block_size + 1 = "
            f"{block_size + 1} tokens and this split has {n_tokens:,}. Use a smaller "
            f"--block-size ({most}), more data, or a larger --val-fraction if this is the "
            "validation split."
        )


def _windows(tokens: TokenArray | Tensor, starts: list[int], block_size: int) -> Batch:
    rows = [np.asarray(tokens[s : s + block_size + 1]) for s in starts]
    both = torch.from_numpy(np.stack(rows).astype(np.int64))
    return both[:, :-1].contiguous(), both[:, 1:].contiguous()


def _as_array(tokens: TokenArray | Tensor) -> TokenArray:
    if isinstance(tokens, Tensor):
        if tokens.dim() != 1:
            raise DataError(f"tokens must be 1-D, got shape {list(tokens.shape)}.")
        return tokens.detach().cpu().numpy()
    return tokens


def get_batch(
    tokens: TokenArray | Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> Batch:
    """`batch_size` random windows: x [batch, block] and y = x shifted by one (int64)."""
    tokens = _as_array(tokens)
    n = len(tokens)
    _check(n, batch_size, block_size)
    starts = torch.randint(n - block_size, (batch_size,), generator=generator)
    return _windows(tokens, starts.tolist(), block_size)


def eval_starts(n_tokens: int, block_size: int, count: int) -> list[int]:
    """`count` window starts spread evenly from the first to the last possible one."""
    last = n_tokens - block_size - 1
    return np.linspace(0, last, count).round().astype(np.int64).tolist() if count else []


def iter_eval_batches(
    tokens: TokenArray | Tensor, batch_size: int, block_size: int, max_batches: int | None = None
) -> Iterator[Batch]:
    """Deterministic evaluation batches (the same every call).

    With `max_batches`: exactly that many full batches whose windows are spread evenly
    over the whole split (overlapping when the split is short). Without: every
    non-overlapping window from the start, each token predicted once (the last batch
    may be short).
    """
    tokens = _as_array(tokens)
    n = len(tokens)
    _check(n, batch_size, block_size)
    if max_batches is not None:
        if max_batches < 1:
            raise DataError(f"max_batches must be at least 1, got {max_batches}.")
        starts = eval_starts(n, block_size, max_batches * batch_size)
    else:
        starts = list(range(0, n - block_size, block_size))
    for lo in range(0, len(starts), batch_size):
        yield _windows(tokens, starts[lo : lo + batch_size], block_size)
