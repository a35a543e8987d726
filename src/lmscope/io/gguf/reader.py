"""Opening a GGUF file: its metadata as Python values, its tensors as memory-mapped bytes.

GGUF (llama.cpp's format) is one file: a header of typed key-value metadata (the
architecture's hyper-parameters under ``{arch}.*``, the tokenizer under ``tokenizer.*``),
a table of tensors (name, ggml type, shape) and the tensor data. We read it with the
`gguf` package's memory-mapped `GGUFReader`: nothing is copied until a tensor is
dequantised, so peak memory is the dequantised model plus one tensor's temporaries.
"""

from __future__ import annotations

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
    """Open `path` with `gguf.GGUFReader` (memory-mapped); metadata is read in full.

    Parsing the header costs a few seconds for a 49k-token vocabulary (the reader builds
    numpy views per string), so open a file once and pass the `GGUFFile` around.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}.")
    if not is_gguf(path):
        raise CheckpointError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')."
        )
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise CheckpointError(
            "reading GGUF files needs the `gguf` package: pip install gguf"
        ) from exc
    try:
        # Copy-on-write mapping: arrays are writable views (torch wraps them without a
        # copy or a warning) and the file is never written.
        reader = GGUFReader(path, "c")
    except Exception as exc:  # the reader raises ValueError, struct and numpy errors
        raise CheckpointError(f"cannot read {path} as GGUF: {exc}") from exc
    metadata = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    tensors = {}
    for t in reader.tensors:
        raw = torch.from_numpy(np.asarray(t.data).view(np.uint8).reshape(-1))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        kind = t.tensor_type
        tensors[t.name] = GGUFTensor(t.name, int(kind), kind.name, shape, raw)
    return GGUFFile(path, metadata, tensors)
