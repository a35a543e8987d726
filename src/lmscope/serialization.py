"""Safe, atomic reading and writing of tensors and configs.

Files are written to a temporary name in the same directory, flushed to disk, then
renamed over the target, so a crash leaves either the old file or the new one, never a
torn one. Tensors are only ever read with safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lmscope.errors import CheckpointError, did_you_mean


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename into it) to disk, where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the result over `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only (0600); give it the permissions a plain
        # open() would have (0666 less the umask), so saved models can be shared.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_safetensors(
    tensors: Mapping[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to a safetensors file, atomically."""
    plain = {name: t.detach().contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read every tensor of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}.")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {name: _aligned(f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc


def _aligned(tensor: Tensor) -> Tensor:
    """`tensor`, copied to fresh memory if it does not start on a 64-byte boundary.

    Tensors read from a file can start anywhere in its buffer. MKL's matmul kernels
    round differently on unaligned data, so a reloaded model would give logits that
    differ from the saved one in the last bits. PyTorch's allocator aligns to 64 bytes.
    """
    return tensor.clone() if tensor.data_ptr() % 64 else tensor


def check_state_dict(module: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Raise a `CheckpointError` naming every missing, extra or mis-shaped tensor."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    problems = []
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"missing tensor {name!r} (expected shape {list(shape)})")
        elif tuple(tensors[name].shape) != shape:
            found = list(tensors[name].shape)
            problems.append(f"tensor {name!r} has shape {found}, expected {list(shape)}")
    for name in tensors:
        if name not in expected:
            hint = did_you_mean(name, expected)
            problems.append(f"unexpected tensor {name!r}" + (f" ({hint})" if hint else ""))
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"weights do not match the model: {shown}{more}.")
