"""Lazy, memory-lean access to the tensors of a Hugging Face checkpoint directory.

Formats, in the order they are looked for: ``model.safetensors``; sharded safetensors
(``model.safetensors.index.json`` naming a file per tensor); ``pytorch_model.bin`` and
its sharded index, read with ``torch.load(weights_only=True, mmap=True)`` (no arbitrary
unpickling, ever).

A safetensors file is a JSON header (each tensor's dtype, shape and byte range) followed
by the raw bytes. Two ways to get a tensor out:

- `read_into`: the bytes go with plain ``read`` calls straight into memory the loader
  allocated for the final tensor (the only copy: nothing of the file is mapped into the
  process, so its pages never count in RSS). Used whenever no arithmetic is needed.
- `open`: safetensors memory-maps the file and hands out views into the mapping, for
  tensors that must be transposed, regrouped or cast. The pages a view touches stay
  resident (and count in RSS) while the mapping lives, so a file is opened per group of
  tensors and closed after it: loading holds the model plus one group's source bytes.

``pytorch_model.bin`` has no per-tensor access (one mapping for the whole file): it
can peak at twice the weights; convert such checkpoints to safetensors once.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lmscope.errors import CheckpointError

#: Weight files, in the order they are looked for.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

#: safetensors dtype names.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint's tensors; their data on demand."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        #: Tensor name -> the file that holds it.
        self.files: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._bin: dict[str, Tensor] = {}
        #: Tensor name -> (first, end) absolute byte offsets in its safetensors file.
        self._spans: dict[str, tuple[int, int]] = {}
        found = next((n for n in WEIGHT_FILES if (self.directory / n).is_file()), None)
        if found is None:
            raise CheckpointError(
                f"{self.directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}."
            )
        self.format = "safetensors" if found.startswith("model.safetensors") else "bin"
        shards = (
            self._index(self.directory / found)
            if found.endswith(".index.json")
            else [self.directory / found]
        )
        for shard in shards:
            if self.format == "safetensors":
                self._scan_safetensors(shard)
            else:
                self._scan_bin(shard)

    # --- discovery ---------------------------------------------------------------------
    def _index(self, path: Path) -> list[Path]:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{path} is not a valid shard index (a JSON object with a 'weight_map' of "
                f"tensor name -> file): {exc!r}."
            ) from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (self.directory / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{path} names shard files that are not in {self.directory}: {', '.join(missing)}."
            )
        return [self.directory / s for s in shards]

    def _scan_safetensors(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    view = f.get_slice(name)
                    self._shapes[name] = tuple(view.get_shape())
                    self._dtypes[name] = DTYPES.get(view.get_dtype(), torch.float32)
                    self.files[name] = path
            # safe_open has checked the header; its byte ranges are what `read_into` needs.
            with open(path, "rb") as raw:
                size = int.from_bytes(raw.read(8), "little")
                header = json.loads(raw.read(size))
            for name, entry in header.items():
                # Types torch has no dtype for (float8...) are left to safetensors' own path.
                if name != "__metadata__" and entry["dtype"] in DTYPES:
                    first, end = entry["data_offsets"]
                    self._spans[name] = (8 + size + first, 8 + size + end)
        except Exception as exc:  # safetensors raises its own types for corrupt files
            raise CheckpointError(
                f"cannot read {path} as safetensors ({exc}); the file is truncated or "
                "corrupt: download or write it again."
            ) from exc

    def _scan_bin(self, path: Path) -> None:
        tensors = _torch_load(path)
        for name, tensor in tensors.items():
            if not isinstance(tensor, Tensor):
                raise CheckpointError(
                    f"{path} holds {name!r} = a {type(tensor).__name__}, not a tensor; only "
                    "state dicts of tensors can be loaded."
                )
            self._bin[name] = tensor
            self._shapes[name] = tuple(tensor.shape)
            self._dtypes[name] = tensor.dtype
            self.files[name] = path

    # --- metadata ----------------------------------------------------------------------
    def names(self) -> set[str]:
        """Every tensor name in the checkpoint."""
        return set(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` (read from the header; no data is touched)."""
        return self._shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        """Dtype of tensor `name`."""
        return self._dtypes[name]

    def main_dtype(self) -> torch.dtype:
        """The floating dtype holding most of the checkpoint's elements."""
        totals: dict[torch.dtype, int] = {}
        for name, dtype in self._dtypes.items():
            if dtype.is_floating_point:
                totals[dtype] = totals.get(dtype, 0) + _numel(self._shapes[name])
        return max(totals, key=lambda d: totals[d]) if totals else torch.float32

    # --- data --------------------------------------------------------------------------
    @contextmanager
    def open(self, names: list[str]) -> Iterator[list[Tensor]]:
        """Views of tensors `names`, valid inside the ``with`` block only (see module doc)."""
        if self.format == "bin":
            yield [self._bin[n] for n in names]
            return
        with ExitStack() as stack:
            handles: dict[Path, Any] = {}
            views = []
            for name in names:
                path = self.files[name]
                if path not in handles:
                    try:
                        handles[path] = stack.enter_context(safe_open(str(path), "pt"))
                    except Exception as exc:
                        raise CheckpointError(f"cannot read {path}: {exc}") from exc
                try:
                    views.append(handles[path].get_tensor(name))
                except Exception as exc:
                    raise CheckpointError(
                        f"cannot read tensor {name!r} from {path} ({exc}); the file is "
                        "truncated or corrupt."
                    ) from exc
            yield views

    def can_read_into(self, names: list[str], dtype: torch.dtype) -> bool:
        """Whether `read_into` can fill a `dtype` tensor with `names` (safetensors, same dtype)."""
        return all(n in self._spans and self._dtypes[n] == dtype for n in names)

    def read_into(self, names: list[str], out: Tensor) -> None:
        """Read the bytes of tensors `names`, one after another, into `out`.

        `out` is a contiguous CPU tensor of their dtype holding exactly their elements
        (rows stacked in order). Its memory is written by ``read`` itself: one copy from
        the page cache, no temporary, no mapping. Safe to call from several threads at
        once (each call opens its own file objects; ``read`` releases the GIL).
        """
        buffer = memoryview(out.detach().reshape(-1).view(torch.uint8).numpy())
        position = 0
        for name in names:
            first, end = self._spans[name]
            _read(self.files[name], first, buffer[position : position + end - first])
            position += end - first
        if position != len(buffer):
            raise ValueError(f"{names} hold {position} bytes; the target has {len(buffer)}")

    def close(self) -> None:
        """Drop the mapping of a ``pytorch_model.bin`` (safetensors files are closed already)."""
        self._bin.clear()


def _read(path: Path, offset: int, into: memoryview) -> None:
    """Fill `into` with the bytes of `path` from `offset` on."""
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        done = 0
        while done < len(into):  # one read returns at most ~2 GiB on Linux
            n = f.readinto(into[done:])
            if not n:
                raise CheckpointError(
                    f"{path} ends {len(into) - done} bytes early, inside a tensor its header "
                    "lists: the file is truncated or corrupt. Download or write it again."
                )
            done += n


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _torch_load(path: Path) -> dict[str, Any]:
    """``torch.load`` restricted to tensors (weights_only), memory-mapped when possible."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files from torch < 1.6 (legacy tar format) cannot be memory-mapped.
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds Python objects that cannot be loaded safely: lmscope reads "
            "pickle files only with torch.load(weights_only=True), which allows tensors "
            "and plain containers. Re-save the state dict alone, or convert it to "
            f"safetensors. ({str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} with torch.load: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a {type(data).__name__}; expected a state dict (name -> tensor)."
        )
    return data
