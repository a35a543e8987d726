"""Opening a GGUF file: its metadata as Python values, its tensors as memory-mapped bytes.

GGUF (llama.cpp's format, ``ggml/docs/gguf.md``) is one little-endian file: a header of
typed key-value metadata (the architecture's hyper-parameters under ``{arch}.*``, the
tokenizer under ``tokenizer.*``), a table of tensors (name, dims, ggml type, offset),
padding to ``general.alignment`` (32 by default), then the tensor data. The file is
memory-mapped: nothing is copied until a tensor is dequantised, so peak memory is the
dequantised model plus one tensor's temporaries.

The header is parsed here, with `struct` and numpy, rather than with the `gguf`
package's `GGUFReader`, which builds numpy views for every element of every array:
~4 s for SmolLM2's 49k tokens and 49k merges, against ~0.1 s here (bench/gguf_load.py).
The values are the same as its ``ReaderField.contents()`` (tested against it); the
ggml type table (names, block sizes) still comes from `gguf.constants`.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import UInt8
from torch import Tensor

from lmscope.errors import CheckpointError

#: The first four bytes of every GGUF file.
MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic bytes (cheap: reads 4 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:  # missing, a directory, unreadable
        return False


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, still encoded."""

    name: str
    type_id: int  # ggml type (``enum ggml_type``)
    type_name: str  # "Q4_1", "F32"...
    shape: tuple[int, ...]  # logical shape, rows first (PyTorch order; GGUF lists it reversed)
    raw: UInt8[Tensor, " n_bytes"]  # the encoded bytes, memory-mapped from the file


@dataclass(frozen=True)
class GGUFFile:
    """An opened GGUF file: metadata by key and tensors by name, in file order."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        """``general.architecture``: the model family ("llama"...)."""
        return str(self.require("general.architecture"))

    def get(self, key: str, default: Any = None) -> Any:
        """The metadata value of `key`, or `default` when the file does not have it."""
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        """The metadata value of `key`; a `CheckpointError` naming it when it is missing."""
        if key not in self.metadata:
            raise CheckpointError(
                f"{self.path} has no metadata key {key!r}, which lmscope needs to build the "
                "model; the file is incomplete or was written for another program."
            )
        return self.metadata[key]


def open_gguf(path: str | Path) -> GGUFFile:
    """Open `path` (memory-mapped, copy-on-write); the metadata is read in full."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}.")
    if not is_gguf(path):
        raise CheckpointError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')."
        )
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError as exc:
        raise CheckpointError(
            "reading GGUF files needs the `gguf` package: pip install gguf"
        ) from exc
    with open(path, "rb") as f:
        # Copy-on-write mapping: arrays are writable views (torch wraps them without a
        # copy or a warning) and the file is never written. The mapping outlives `f`.
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        header = _Header(data)
        metadata, infos = header.parse()
        alignment = int(metadata.get("general.alignment", 32))
        start = -(-header.pos // alignment) * alignment  # the data section is aligned
        whole = np.frombuffer(data, dtype=np.uint8)
        tensors = {}
        for name, dims, type_id, offset in infos:
            kind = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[kind]
            n_values = math.prod(dims)
            first, n_bytes = start + offset, n_values // block * type_size
            if first + n_bytes > len(whole):
                raise ValueError(f"tensor {name!r} ends past the end of the file (truncated)")
            if name in tensors:
                raise ValueError(f"tensor {name!r} is listed twice")
            raw = torch.from_numpy(whole[first : first + n_bytes])
            shape = tuple(reversed(dims))
            tensors[name] = GGUFTensor(name, type_id, kind.name, shape, raw)
    except (ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as GGUF: {exc}") from exc
    return GGUFFile(path, metadata, tensors)


#: Metadata value types (``gguf_type`` in ggml) -> `struct` format of a scalar.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
#: The same for numpy, to read numeric arrays in one call.
_ARRAYS = {k: np.dtype("<" + v) for k, v in _SCALARS.items()}
_STRING, _ARRAY = 8, 9


class _Header:
    """A cursor over the header of a GGUF file (version 2 or 3, little-endian)."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def parse(self) -> tuple[dict[str, Any], list[tuple[str, list[int], int, int]]]:
        """Metadata by key, and each tensor's name, dims (GGUF order), type id and offset."""
        magic, version = self.data[:4], struct.unpack_from("<I", self.data, 4)[0]
        self.pos = 8
        if magic != MAGIC or version not in (2, 3):
            endian = " (big-endian files are not supported)" if version >> 16 else ""
            raise ValueError(f"GGUF version {version}{endian}; lmscope reads versions 2 and 3")
        n_tensors, n_keys = self.scalar("Q"), self.scalar("Q")
        metadata = {}
        for _ in range(n_keys):
            key = self.string()
            metadata[key] = self.value(self.scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = self.string()
            dims = [self.scalar("Q") for _ in range(self.scalar("I"))]
            infos.append((name, dims, self.scalar("I"), self.scalar("Q")))
        return metadata, infos

    def scalar(self, fmt: str) -> Any:
        """One little-endian value of `struct` format `fmt`."""
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        """A GGUF string: a uint64 byte count, then UTF-8 bytes."""
        n = self.scalar("Q")
        self.pos += n
        if self.pos > len(self.data):
            raise ValueError("a string runs past the end of the file (truncated)")
        return self.data[self.pos - n : self.pos].decode("utf-8")

    def value(self, kind: int) -> Any:
        """A metadata value of type `kind`; an array becomes a list."""
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            return self.scalar(_SCALARS[kind])
        sub, count = self.scalar("I"), self.scalar("Q")
        if sub in _ARRAYS:  # numbers: one numpy read
            values = np.frombuffer(self.data, _ARRAYS[sub], count, self.pos)
            self.pos += values.nbytes
            return values.tolist()
        if sub == _STRING:  # the vocabulary and merges: inlined, it runs 100k times
            data, pos, out = self.data, self.pos, []
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(count):
                (n,) = unpack(data, pos)
                out.append(data[pos + 8 : pos + 8 + n].decode("utf-8"))
                pos += 8 + n
            if pos > len(data):
                raise ValueError("a string array runs past the end of the file (truncated)")
            self.pos = pos
            return out
        return [self.value(sub) for _ in range(count)]
