"""Dequantisation of llama.cpp's (ggml's) tensor types, one function per type, in torch.

A quantised tensor is a sequence of fixed-size *blocks*; each block holds ``block_size``
consecutive values of a row as small integers plus one or a few float16 scales. The
functions below take blocks as raw bytes, ``[n_blocks, type_size]`` uint8, and return
``[n_blocks, block_size]`` float32. They follow ggml's reference decoders
(``dequantize_row_*`` in ``ggml-quants.c``) operation for operation, so the float32 results
are bit-identical to ``gguf.quants.dequantize`` (tested on every type).

Layouts (``d``, ``m``: float16 scale and offset):
- Q8_0 (34 bytes / 32 values): ``d``, 32 int8; ``x = d * q``.
- Q4_0 (18 / 32): ``d``, 16 bytes of nibbles; ``x = d * (q - 8)``.
- Q4_1 (20 / 32): ``d``, ``m``, 16 bytes of nibbles; ``x = d * q + m``.
  In both, byte j holds value j (low nibble) and value j + 16 (high nibble).
- Q4_K (144 / 256): super-block scale ``d`` and ``dmin``, 12 bytes packing eight 6-bit
  sub-block scales and mins, 128 bytes of nibbles; sub-block s of 32 values:
  ``x = d * sc_s * q - dmin * m_s``.
- Q6_K (210 / 256): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales (one
  per 16 values), ``d`` last; ``x = d * scale * (q - 32)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from lmscope.errors import CheckpointError

#: Values per K-quant super-block.
QK_K = 256


def _f16(raw: UInt8[Tensor, "n 2"]) -> Float[Tensor, "n 1"]:
    """Two bytes per row (little-endian float16) -> float32, ``[n, 1]``."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: UInt8[Tensor, "n m"], group: int) -> UInt8[Tensor, "n m2"]:
    """Unpack 4-bit values: each run of `group` bytes gives its low nibbles, then its high ones."""
    n, m = qs.shape
    runs = qs.view(n, m // group, 1, group)
    both = torch.cat((runs & 0x0F, runs >> 4), dim=2)  # [n, runs, 2, group]
    return both.reshape(n, 2 * m)


def dequantize_f32(blocks: UInt8[Tensor, "n 4"]) -> Float[Tensor, "n 1"]:
    """F32: the bytes are the values."""
    return blocks.contiguous().view(torch.float32)


def dequantize_f16(blocks: UInt8[Tensor, "n 2"]) -> Float[Tensor, "n 1"]:
    """F16: IEEE half precision, widened exactly."""
    return _f16(blocks)


def dequantize_bf16(blocks: UInt8[Tensor, "n 2"]) -> Float[Tensor, "n 1"]:
    """BF16: the top 16 bits of a float32 (widened exactly by a shift)."""
    bits = blocks.contiguous().view(torch.int16).to(torch.int32) << 16
    return bits.view(torch.float32)


def dequantize_q8_0(blocks: UInt8[Tensor, "n 34"]) -> Float[Tensor, "n 32"]:
    """Q8_0: one float16 scale and 32 signed bytes."""
    d = _f16(blocks[:, :2])
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return q * d


def dequantize_q4_0(blocks: UInt8[Tensor, "n 18"]) -> Float[Tensor, "n 32"]:
    """Q4_0: one float16 scale, 32 nibbles centred on 8."""
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:], 16).to(torch.int8) - 8
    return d * q.float()


def dequantize_q4_1(blocks: UInt8[Tensor, "n 20"]) -> Float[Tensor, "n 32"]:
    """Q4_1: a float16 scale and minimum, 32 unsigned nibbles."""
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 4:], 16).float()
    return (d * q) + m


def _k_scales_mins(
    packed: UInt8[Tensor, "n 12"],
) -> tuple[UInt8[Tensor, "n 8"], UInt8[Tensor, "n 8"]]:
    """Unpack Q4_K's eight 6-bit scales and eight 6-bit mins from 12 bytes.

    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; bytes 8-11 hold the low 4
    bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits sit in the
    spare top bits of bytes 0-3 (scales) and 4-7 (mins).
    """
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=1)
    return scales, mins


def dequantize_q4_k(blocks: UInt8[Tensor, "n 144"]) -> Float[Tensor, "n 256"]:
    """Q4_K: 256 nibbles in 8 sub-blocks of 32, each with its own 6-bit scale and min."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    scale = (d * scales.float()).view(n, 8, 1)
    offset = (dmin * mins.float()).view(n, 8, 1)
    # Each run of 32 bytes holds two sub-blocks: its low nibbles, then its high ones.
    q = _nibbles(blocks[:, 16:], 32).float().view(n, 8, 32)
    return (scale * q - offset).view(n, QK_K)


def dequantize_q6_k(blocks: UInt8[Tensor, "n 210"]) -> Float[Tensor, "n 256"]:
    """Q6_K: 256 6-bit values (4 low bits + 2 high bits), an int8 scale per 16 values."""
    n = blocks.shape[0]
    low = _nibbles(blocks[:, :128], 64).view(n, 8, 32)
    # Each run of 32 high-bit bytes serves four sub-blocks of 32: bits 0-1, 2-3, 4-5, 6-7.
    high = blocks[:, 128:192].reshape(n, 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).view(1, 1, 4, 1)
    high = ((high >> shifts) & 0x03).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).view(n, 16, 16).float()
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = _f16(blocks[:, 208:210])
    return ((d * scales).view(n, 16, 1) * q).view(n, QK_K)


@dataclass(frozen=True)
class QuantType:
    """A ggml tensor type: its id in ``enum ggml_type``, block geometry and decoder."""

    name: str
    type_id: int
    block_size: int  # values per block
    type_size: int  # bytes per block
    decode: Callable[[Tensor], Tensor]


#: The types lmscope dequantises, by ggml type id.
QUANT_TYPES: dict[int, QuantType] = {
    t.type_id: t
    for t in (
        QuantType("F32", 0, 1, 4, dequantize_f32),
        QuantType("F16", 1, 1, 2, dequantize_f16),
        QuantType("Q4_0", 2, 32, 18, dequantize_q4_0),
        QuantType("Q4_1", 3, 32, 20, dequantize_q4_1),
        QuantType("Q8_0", 8, 32, 34, dequantize_q8_0),
        QuantType("Q4_K", 12, QK_K, 144, dequantize_q4_k),
        QuantType("Q6_K", 14, QK_K, 210, dequantize_q6_k),
        QuantType("BF16", 30, 1, 2, dequantize_bf16),
    )
}
SUPPORTED_TYPES = ", ".join(t.name for t in QUANT_TYPES.values())

#: Blocks decoded at once: bounds the float32 temporaries to ~64 MiB whatever the tensor.
_CHUNK_VALUES = 1 << 24


def dequantize(
    raw: UInt8[Tensor, " n_bytes"],
    type_id: int,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    out: Tensor | None = None,
    type_name: str | None = None,
) -> Tensor:
    """Decode the raw bytes of one tensor into a fresh `dtype` tensor of `shape` (or `out`).

    `shape` is the logical shape, rows first (PyTorch order). Blocks are decoded a chunk at
    a time on the result's device, straight into the result, so memory stays at the
    result plus one chunk. `type_name` names an unsupported type in the error (ggml has
    more types than lmscope decodes).
    """
    kind = QUANT_TYPES.get(type_id)
    if kind is None:
        name = type_name or f"ggml type {type_id}"
        raise CheckpointError(
            f"GGUF tensor type {name} is not supported; lmscope dequantises {SUPPORTED_TYPES}. "
            "Re-quantise the model to one of these (llama.cpp's llama-quantize)."
        )
    n_values = 1
    for dim in shape:
        n_values *= dim
    if n_values % kind.block_size or raw.numel() != n_values // kind.block_size * kind.type_size:
        raise CheckpointError(
            f"GGUF tensor of type {kind.name} and shape {list(shape)} should hold "
            f"{n_values // kind.block_size * kind.type_size} bytes, found {raw.numel()}."
        )
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    elif out.numel() != n_values:
        raise CheckpointError(
            f"cannot decode a {kind.name} tensor of shape {list(shape)} into {list(out.shape)}."
        )
    flat = out.view(-1)
    blocks = raw.view(-1, kind.type_size)
    step = max(1, _CHUNK_VALUES // kind.block_size)
    for start in range(0, blocks.shape[0], step):
        chunk = kind.decode(blocks[start : start + step].to(out.device))
        flat[start * kind.block_size : start * kind.block_size + chunk.numel()] = chunk.view(-1)
    return out
