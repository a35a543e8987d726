"""lmscope's GGUF header parser: the same metadata and tensor bytes as `gguf.GGUFReader`,
and a clear `CheckpointError` for files it cannot read."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmscope.errors import CheckpointError
from lmscope.io.gguf import GGUFFile, open_gguf
from tests.io.gguf.synthetic import tiny_llama_gguf

gguf = pytest.importorskip("gguf")


def assert_same_as_gguf_reader(file: GGUFFile) -> None:
    """Every metadata value (and its Python type) and every tensor equals GGUFReader's."""
    reader = gguf.GGUFReader(file.path, "r")
    expected: dict[str, Any] = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    assert list(file.metadata) == list(expected)
    for key, value in expected.items():
        assert file.metadata[key] == value, key
        assert type(file.metadata[key]) is type(value), key
    assert list(file.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        ours = file.tensors[t.name]
        assert ours.shape == tuple(int(d) for d in reversed(t.shape.tolist())), t.name
        assert (ours.type_id, ours.type_name) == (int(t.tensor_type), t.tensor_type.name)
        raw = torch.from_numpy(np.array(t.data).view(np.uint8).reshape(-1))
        assert torch.equal(ours.raw, raw), t.name


def test_tiny_file_reads_like_gguf_reader(tmp_path: Path) -> None:
    # Several tensor types, and metadata of several value types (bool, float, arrays).
    types = {"attn_q": "Q8_0", "ffn_down": "Q4_K", "ffn_up": "Q4_1", "output": "F16"}
    extra = {"general.flags": [1, 2, 3], "general.ok": True, "general.names": ["a", "bé"]}
    tiny_llama_gguf(tmp_path / "m.gguf", types=types, metadata=extra)
    file = open_gguf(tmp_path / "m.gguf")
    assert file.metadata["general.flags"] == [1, 2, 3] and file.metadata["general.ok"] is True
    assert_same_as_gguf_reader(file)


def test_smollm2_reads_like_gguf_reader(smollm2_file: GGUFFile) -> None:
    assert len(smollm2_file.metadata["tokenizer.ggml.tokens"]) == 49152
    assert_same_as_gguf_reader(smollm2_file)


def test_truncated_tensor_data_is_named(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cannot read .*cut.gguf as GGUF.*truncated"):
        open_gguf(tmp_path / "cut.gguf")


def test_truncated_header_is_a_checkpoint_error(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:300])  # inside the metadata
    with pytest.raises(CheckpointError, match=r"cannot read .* as GGUF"):
        open_gguf(tmp_path / "cut.gguf")


@pytest.mark.parametrize(
    ("version", "message"),
    [(1, "version 1; lmscope reads versions 2 and 3"), (3 << 24, "big-endian")],
)
def test_unsupported_versions_are_named(tmp_path: Path, version: int, message: str) -> None:
    (tmp_path / "v.gguf").write_bytes(b"GGUF" + struct.pack("<I", version) + bytes(16))
    with pytest.raises(CheckpointError, match=message):
        open_gguf(tmp_path / "v.gguf")
