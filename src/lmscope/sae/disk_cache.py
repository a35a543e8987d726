"""Activations on disk: sharded safetensors written once, read memory-mapped many times.

Collecting activations costs a forward pass per token; training several SAEs, or one
many times, on the same activations should pay it once. `write_activation_cache`
writes what an activation producer yields into shards of a fixed number of rows
(``shard_00000.safetensors`` ..., one tensor per hook, rows aligned across hooks), each
written atomically, then ``manifest.json`` last: a directory without a manifest is an
interrupted write and is never read.

`DiskActivations(dir)` reads a cache back. Shards are opened with safetensors'
``safe_open``, which memory-maps the file, and only the rows asked for are read, so
memory does not grow with the cache. `chunks(epoch, start)` yields fixed-size row
ranges of every shard in a seeded random order that mixes shards, so a bounded
shuffling buffer downstream sees rows from all over the cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.serialization import write_json, write_safetensors

MANIFEST = "manifest.json"
FORMAT = "lmscope-activations"
FORMAT_VERSION = 1
#: Rows per shard by default: 2^16 rows of a 576-wide float32 activation is 144 MiB.
DEFAULT_SHARD_ROWS = 1 << 16


class ActivationCacheError(LmscopeError, ValueError):
    """An activation cache that is missing, incomplete, damaged, or not for these hooks."""


def is_activation_cache(path: str | Path) -> bool:
    """Whether `path` is a complete activation cache (a directory with its manifest)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def write_activation_cache(
    batches: Iterable[dict[str, Tensor]],
    out_dir: str | Path,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    dtype: torch.dtype = torch.float32,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `batches` (dicts hook -> [rows, d], rows aligned) as a cache; returns its manifest.

    Every shard but the last holds exactly `shard_rows` rows. `info` (source, model,
    context size...) is stored in the manifest for readers to check. An existing cache
    is refused unless `overwrite`; leftovers of an interrupted write are replaced.
    """
    out = Path(out_dir)
    if shard_rows < 1:
        raise ActivationCacheError(f"shard_rows must be positive, got {shard_rows}.")
    if is_activation_cache(out) and not overwrite:
        raise ActivationCacheError(
            f"{out} already holds an activation cache; pass overwrite=True (--overwrite) to "
            "replace it, or read it with ActivationStore."
        )
    if out.exists():
        if any(p.name not in _OWN_FILES and not _is_shard(p.name) for p in out.iterdir()):
            raise ActivationCacheError(
                f"{out} exists and holds files that are not an activation cache; choose an "
                "empty or new directory."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hooks: dict[str, int] | None = None
    pending: dict[str, list[Tensor]] = {}
    n_pending = 0
    shards: list[dict[str, Any]] = []

    def flush(rows: int) -> None:
        nonlocal pending, n_pending
        assert hooks is not None
        joined = {h: torch.cat(pending[h]) for h in hooks}
        name = f"shard_{len(shards):05d}.safetensors"
        write_safetensors({h: t[:rows] for h, t in joined.items()}, out / name)
        shards.append({"file": name, "rows": rows})
        rest = {h: t[rows:] for h, t in joined.items()}
        n_pending -= rows
        pending = {h: [t] if t.numel() else [] for h, t in rest.items()}

    for batch in batches:
        if hooks is None:
            hooks = {h: int(t.shape[-1]) for h, t in batch.items()}
            pending = {h: [] for h in hooks}
        if set(batch) != set(hooks):
            raise ActivationCacheError(
                f"a batch holds hooks {sorted(batch)}, the first held {sorted(hooks)}."
            )
        rows = {int(t.shape[0]) for t in batch.values()}
        if len(rows) != 1:
            raise ActivationCacheError(f"a batch's hooks hold different row counts: {rows}.")
        for h, t in batch.items():
            pending[h].append(t.detach().to("cpu", dtype))
        n_pending += rows.pop()
        while n_pending >= shard_rows:
            flush(shard_rows)
    if hooks is None:
        raise ActivationCacheError("no activations to cache: the source produced no tokens.")
    if n_pending:
        flush(n_pending)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "hooks": hooks,
        "dtype": str(dtype).removeprefix("torch."),
        "shard_rows": shard_rows,
        "rows": sum(s["rows"] for s in shards),
        "shards": shards,
        "info": info or {},
    }
    write_json(out / MANIFEST, manifest)  # last: its presence marks a complete cache
    return manifest


_OWN_FILES = {MANIFEST}


def _is_shard(name: str) -> bool:
    return name.startswith(("shard_", ".shard_")) and ".safetensors" in name


class DiskActivations:
    """A cache written by `write_activation_cache`, read memory-mapped in shuffled chunks."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise ActivationCacheError(
                f"{self.directory} is not an activation cache (no {MANIFEST}); an interrupted "
                "write leaves none. Build it with `cache_activations` or --cache-dir."
            )
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ActivationCacheError(f"cannot read {path}: {exc}") from exc
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != FORMAT_VERSION:
            raise ActivationCacheError(
                f"{path} is not an lmscope activation cache of version {FORMAT_VERSION}."
            )
        self.hooks: dict[str, int] = dict(self.manifest["hooks"])
        self.rows = int(self.manifest["rows"])
        for shard in self.manifest["shards"]:
            if not (self.directory / shard["file"]).is_file():
                raise ActivationCacheError(
                    f"{self.directory / shard['file']} is missing: the cache is damaged; "
                    "build it again."
                )

    def check_hooks(self, hook_names: Iterable[str]) -> None:
        """Refuse hooks the cache does not hold, naming those it does."""
        missing = [h for h in hook_names if h not in self.hooks]
        if missing:
            raise ActivationCacheError(
                f"the activation cache at {self.directory} has no {missing[0]!r}; it holds "
                f"{', '.join(self.hooks)}."
            )

    def chunk_plan(self, chunk_rows: int, epoch: int, seed: int) -> list[tuple[int, int, int]]:
        """(shard, start, stop) row ranges covering the cache, in this epoch's seeded order."""
        plan = [
            (i, start, min(start + chunk_rows, int(shard["rows"])))
            for i, shard in enumerate(self.manifest["shards"])
            for start in range(0, int(shard["rows"]), chunk_rows)
        ]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(plan), generator=generator).tolist()
        return [plan[i] for i in order]

    def read(self, shard: int, start: int, stop: int, hooks: Iterable[str]) -> dict[str, Tensor]:
        """Rows ``[start, stop)`` of one shard, for `hooks` (only those bytes are read)."""
        path = self.directory / self.manifest["shards"][shard]["file"]
        with safe_open(str(path), framework="pt") as f:
            return {h: f.get_slice(h)[start:stop] for h in hooks}

    def chunks(
        self, hooks: list[str], chunk_rows: int, epoch: int, seed: int, start: int = 0
    ) -> Iterator[dict[str, Tensor]]:
        """Chunk `start`, `start + 1`, ... of this epoch's plan, as dicts hook -> [rows, d]."""
        for shard, lo, hi in self.chunk_plan(chunk_rows, epoch, seed)[start:]:
            yield self.read(shard, lo, hi, hooks)


__all__ = [
    "DEFAULT_SHARD_ROWS",
    "MANIFEST",
    "ActivationCacheError",
    "DiskActivations",
    "is_activation_cache",
    "write_activation_cache",
]
