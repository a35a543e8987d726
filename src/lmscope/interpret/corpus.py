"""A corpus sample as token batches, for analyses that scan activations over text.

`corpus_token_batches` reads text files (default: the Shakespeare corpus of
`lmscope.data.default_corpus`, else anything ``--data`` accepts) and returns
``[batch, seq_len]`` windows of at most `max_tokens` tokens in all. The sample is
spread over the files: with fewer windows than files, files evenly spaced in the sorted
list give one window each; otherwise every file gives an equal share. Each file's
windows start at its middle (a play's dialogue, not its title and list of characters)
and follow one another. Deterministic: the same arguments give the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.errors import LmscopeError

#: Characters read per token wanted (generous: English BPE averages ~4, bytes 1).
CHARS_PER_TOKEN = 8


def _file_windows(source: Any, tokenizer: Any, n_windows: int, seq_len: int) -> list[list[int]]:
    """Up to `n_windows` windows of `seq_len` tokens from the middle of one source."""
    text = "".join(source.iter_text())
    need = n_windows * seq_len * CHARS_PER_TOKEN
    start = max(0, len(text) // 2 - need // 2) if len(text) > need else 0
    ids = tokenizer.encode(text[start : start + need])
    if start > 0:
        ids = ids[1:]  # the first token may be a word cut in half
    return [
        ids[i : i + seq_len]
        for i in range(0, n_windows * seq_len, seq_len)
        if i + seq_len <= len(ids)
    ]


def corpus_token_batches(
    tokenizer: Any,
    data: str | Path | Sequence[str | Path] | None = None,
    *,
    max_tokens: int = 4096,
    seq_len: int = 128,
    batch_size: int = 8,
) -> list[Tensor]:
    """``[batch, seq_len]`` token batches sampled from `data` (default: Shakespeare).

    At most `max_tokens` tokens in ``ceil(max_tokens / seq_len)`` windows (see the
    module docstring for how they are spread). Needs a tokenizer.
    """
    from lmscope.data import default_corpus, resolve_sources

    if tokenizer is None:
        raise LmscopeError(
            "scanning a text corpus needs the model's tokenizer, and this model has none."
        )
    if max_tokens < seq_len or seq_len < 1 or batch_size < 1:
        raise LmscopeError(
            f"need max_tokens >= seq_len >= 1 and batch_size >= 1; got max_tokens="
            f"{max_tokens}, seq_len={seq_len}, batch_size={batch_size}."
        )
    sources = resolve_sources(default_corpus() if data is None else data)
    n_windows = max_tokens // seq_len
    if n_windows < len(sources):
        picks = [sources[round(i)] for i in torch.linspace(0, len(sources) - 1, n_windows).tolist()]
        shares = [(s, 1) for s in picks]
    else:
        per_file = math.ceil(n_windows / len(sources))
        shares = [(s, per_file) for s in sources]
    windows: list[list[int]] = []
    for source, share in shares:
        windows += _file_windows(source, tokenizer, min(share, n_windows - len(windows)), seq_len)
        if len(windows) >= n_windows:
            break
    if not windows:
        raise LmscopeError(
            f"the corpus has no stretch of {seq_len} tokens; use a smaller seq_len or more text."
        )
    ids = torch.tensor(windows, dtype=torch.long)
    return list(ids.split(batch_size))
