"""Tokenize a corpus once into memory-mapped token shards with a train / val split.

`prepare` streams: each source is read and tokenized chunk by chunk into a scratch
file, then split and appended to the split's shards, so memory use does not grow with
the corpus. The split rule, per source: of its n tokens the first
``int(n * (1 - val_fraction))`` are train and the rest val. For one file this is
nanoGPT's split (``data[:int(n*0.9)]`` / ``data[int(n*0.9):]``), so tiny Shakespeare's
val loss is comparable; for many files every file contributes to both splits.

Documents (files, JSONL records) are joined with the tokenizer's eos token, or "\\n\\n"
when it has none (and can encode it), or nothing; meta.json records which.

Shards are raw little-endian ``uint16`` (vocabularies up to 65,536 ids) or ``uint32``
arrays, nanoGPT's ``train.bin`` format, at most `shard_tokens` each. Everything is
written into a hidden temporary directory that is renamed to `out_dir` only when
complete, so an interrupted run never leaves a dataset that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmscope.data.read import CHUNK_BYTES, DataError
from lmscope.data.sources import Source, resolve_sources
from lmscope.errors import LmscopeError
from lmscope.serialization import fsync_dir, write_json
from lmscope.tokenizers import Tokenizer

META = "meta.json"
FORMAT = "lmscope-tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
#: Tokens per shard file (512 MiB of uint16): large, few files; small enough to copy.
DEFAULT_SHARD_TOKENS = 1 << 28
SPLIT_RULE = (
    "per source: the first int(n * (1 - val_fraction)) of its n tokens are train, "
    "the rest val (nanoGPT's split for a single file)"
)
_COPY_TOKENS = 1 << 22


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32; error beyond that."""
    if vocab_size < 1:
        raise DataError(f"vocab_size must be positive, got {vocab_size}.")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise DataError(
        f"vocab_size {vocab_size:,} does not fit the largest token dtype, uint32 (at most "
        f"{1 << 32:,} ids); use a tokenizer with a smaller vocabulary."
    )


@dataclass(frozen=True)
class PreparedData:
    """What `prepare` wrote: its directory, its meta.json, and how long it took."""

    directory: Path
    meta: dict[str, Any]
    seconds: float

    def n_tokens(self, split: str) -> int:
        """Tokens in a split ('train' or 'val')."""
        return int(self.meta["splits"][split]["tokens"])

    @property
    def tokens_per_second(self) -> float:
        """Tokens written per second of `prepare` (reading, tokenizing, writing)."""
        return self.meta["totals"]["tokens"] / max(self.seconds, 1e-9)


class _ShardWriter:
    """Appends one split's tokens to numbered shard files of at most `shard_tokens`."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype = directory, split, dtype
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self.total = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            assert self._file is not None
            self._file.write(np.ascontiguousarray(part).data)  # no copy of a memmap slice
            self.shards[-1]["tokens"] += len(part)
            self.total += len(part)

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115  # closed in close()
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def separator_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids put between documents: eos, else "\\n\\n" if encodable, else none."""
    if tokenizer.eos_id is not None:
        return [tokenizer.eos_id]
    try:
        return tokenizer.encode("\n\n")
    except LmscopeError:  # a char vocabulary without newlines
        return []


def _check_ids(ids: np.ndarray, vocab_size: int, source: Source) -> None:
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise DataError(
            f"the tokenizer produced id {bad} for {source.path}, outside its vocab_size "
            f"{vocab_size}; the tokenizer files are inconsistent (rebuild the tokenizer)."
        )


def _tokenize_source(
    source: Source,
    tokenizer: Tokenizer,
    separator: np.ndarray,
    scratch: BinaryIO,
    dtype: np.dtype,
    progress: Callable[[int], None],
    chunk_bytes: int,
) -> dict[str, Any]:
    """Tokenize one source into `scratch`; return its sizes and hash."""
    digest = hashlib.sha256()
    chars = documents = tokens = 0
    for chunk in source.iter_chunks(chunk_bytes, on_bytes=digest.update):
        if chunk.starts_document:
            if documents and len(separator):
                scratch.write(separator.astype(dtype).tobytes())
                tokens += len(separator)
            documents += 1
        ids = tokenizer.encode_array(chunk.text)
        _check_ids(ids, tokenizer.vocab_size, source)
        scratch.write(ids.astype(dtype).tobytes())
        tokens += len(ids)
        chars += len(chunk.text)
        progress(chunk.n_bytes)
    return {
        **source.describe(),
        "sha256": digest.hexdigest(),
        "chars": chars,
        "documents": documents,
        "tokens": tokens,
    }


def _copy(scratch: Path, dtype: np.dtype, start: int, stop: int, writer: _ShardWriter) -> None:
    if stop <= start:
        return
    tokens = np.memmap(scratch, dtype=dtype, mode="r")
    for lo in range(start, stop, _COPY_TOKENS):
        writer.write(np.asarray(tokens[lo : min(stop, lo + _COPY_TOKENS)]))
    del tokens


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a directory for the prepared data.")
    if (out_dir / META).is_file():
        if not overwrite:
            raise DataError(
                f"{out_dir} already holds prepared data ({META}); pass --overwrite "
                "(overwrite=True) to replace it, or choose another --out."
            )
    elif any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} exists and is not empty (and is not prepared data); choose a new "
            "or empty --out directory."
        )


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` to `out_dir`, replacing an empty or prepared directory."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "data")
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(
    sources: Sequence[Source | str | Path] | str | Path,
    out_dir: str | Path,
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> PreparedData:
    """Tokenize `sources` into memmap shards + meta.json + the tokenizer, in `out_dir`.

    `progress(n_bytes, total_bytes)` is called as the sources' bytes are consumed. See
    the module docstring for the split rule, document separators and the shard format.
    Files are read `chunk_bytes` at a time.
    """
    started = time.perf_counter()
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be at least 1, got {shard_tokens}.")
    if isinstance(sources, (str, Path)) or not all(isinstance(s, Source) for s in sources):
        sources = resolve_sources(sources)
    if not sources:
        raise DataError("prepare got no sources; pass at least one file.")
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    separator = np.asarray(separator_ids(tokenizer), dtype=np.int64)
    total_bytes = sum(source.size for source in sources)

    def advance(n_bytes: int) -> None:
        if progress is not None:
            progress(n_bytes, total_bytes)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
        described = []
        scratch_path = tmp / "scratch.tmp"
        for source in sources:
            with open(scratch_path, "wb") as scratch:
                info = _tokenize_source(
                    source, tokenizer, separator, scratch, dtype, advance, chunk_bytes
                )
            n = info["tokens"]
            n_train = int(n * (1.0 - val_fraction))
            for split, (lo, hi) in zip(SPLITS, ((0, n_train), (n_train, n)), strict=True):
                if hi > lo and writers[split].total and len(separator):
                    writers[split].write(separator)
                _copy(scratch_path, dtype, lo, hi, writers[split])
            described.append({**info, "train_tokens": n_train, "val_tokens": n - n_train})
        scratch_path.unlink(missing_ok=True)
        for writer in writers.values():
            writer.close()
        total = sum(w.total for w in writers.values())
        if total == 0:
            raise DataError("the sources hold no text to tokenize (every document was empty).")
        tokenizer.save(tmp)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "tokenizer": tokenizer.describe(),
            "val_fraction": val_fraction,
            "split_rule": SPLIT_RULE,
            "separator": separator.tolist(),
            "splits": {s: {"tokens": w.total, "shards": w.shards} for s, w in writers.items()},
            "sources": described,
            "totals": {
                "bytes": sum(d["bytes"] for d in described),
                "chars": sum(d["chars"] for d in described),
                "tokens": total,
            },
        }
        write_json(tmp / META, meta)  # last: its presence marks a complete dataset
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData(out_dir, meta, time.perf_counter() - started)
