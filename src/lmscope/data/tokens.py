"""Opening prepared data read-only: `TokenData(dir)` maps its shards, never loads them.

A split is a 1-D array of token ids: one ``np.memmap`` when it has one shard, or a
`ShardedTokens` view that presents several as one (slicing reads only the shards a
slice touches). Nothing reads a whole split into memory.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmscope.data.prepare import FORMAT, FORMAT_VERSION, META, SPLITS
from lmscope.data.read import DataError
from lmscope.tokenizers import Tokenizer, load_tokenizer


class ShardedTokens:
    """Several 1-D token arrays presented as one (length, contiguous slices, indexing)."""

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        if not shards:
            raise DataError("ShardedTokens needs at least one shard.")
        self.shards = list(shards)
        self.dtype = self.shards[0].dtype
        #: offsets[i] = index of shard i's first token; offsets[-1] = total length.
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        """(number of tokens,)"""
        return (len(self),)

    @property
    def ndim(self) -> int:
        """Always 1."""
        return 1

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise DataError("ShardedTokens supports contiguous slices only (step 1).")
            return self._read(start, max(start, stop))
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"token index {index} out of range for {len(self)} tokens")
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.shards[shard][i - int(self.offsets[shard])]

    def _read(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while start < stop:
            lo = int(self.offsets[first])
            take = min(stop, int(self.offsets[first + 1])) - start
            parts.append(np.asarray(self.shards[first][start - lo : start - lo + take]))
            start += take
            first += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All tokens as one array (reads the whole split: for small data and tests)."""
        whole = self._read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


#: A split of token ids: a memmap (or any 1-D array), or several shards as one.
TokenArray = np.ndarray | ShardedTokens


class TokenData:
    """Prepared data opened read-only: `meta`, `tokenizer`, `split(name)`, `n_tokens(name)`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META
        if not meta_path.is_file():
            raise DataError(
                f"{self.directory} is not prepared data: it has no {META}. Create it with "
                f"`lmscope data prepare --out {self.directory}` (or lmscope.data.prepare)."
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read {meta_path}: {exc}") from exc
        if self.meta.get("format") != FORMAT or self.meta.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_path} is not lmscope token data of version {FORMAT_VERSION} (format "
                f"{self.meta.get('format')!r}, version {self.meta.get('version')!r}); prepare "
                "the data again with this lmscope."
            )
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        for split in SPLITS:
            for shard in self.meta["splits"][split]["shards"]:
                self._check_shard(shard)

    def _check_shard(self, shard: dict[str, Any]) -> None:
        path = self.directory / shard["file"]
        expected = int(shard["tokens"]) * self.dtype.itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            found = "missing" if actual is None else f"{actual:,} bytes"
            raise DataError(
                f"{path} is {found}, expected {expected:,} bytes ({shard['tokens']:,} "
                f"{self.dtype.name} tokens): the data is damaged; prepare it again."
            )

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was prepared with (saved beside it)."""
        return load_tokenizer(self.directory)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size: every token id is below it."""
        return int(self.meta["vocab_size"])

    def _split_meta(self, name: str) -> dict[str, Any]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}.")
        return self.meta["splits"][name]

    def n_tokens(self, split: str) -> int:
        """Number of tokens in a split."""
        return int(self._split_meta(split)["tokens"])

    def split(self, name: str) -> TokenArray:
        """The tokens of split `name` ('train' or 'val'), memory-mapped read-only."""
        maps = [
            np.memmap(self.directory / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],))
            for s in self._split_meta(name)["shards"]
            if s["tokens"] > 0
        ]
        if not maps:
            return np.zeros(0, dtype=self.dtype)
        return maps[0] if len(maps) == 1 else ShardedTokens(maps)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.n_tokens(s):,}" for s in SPLITS)
        return f"TokenData({str(self.directory)!r}, {self.meta['dtype']}, {counts})"
