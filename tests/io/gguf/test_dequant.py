"""Every supported ggml type decodes bit-identically to `gguf.quants.dequantize`.

Real tensors from the SmolLM2 file where the type occurs there (F32, Q8_0, Q4_1);
`gguf.quants.quantize` output for F16, BF16 and Q4_0; random valid blocks (random bits,
finite float16 scales) for Q4_K and Q6_K, which `gguf` cannot quantise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmscope.errors import CheckpointError
from lmscope.io.gguf import QUANT_TYPES, GGUFFile, dequantize
from lmscope.io.gguf import dequant as dequant_module
from tests.io.gguf.synthetic import random_k_blocks

gguf = pytest.importorskip("gguf")

#: A tensor of each type that SmolLM2's file holds.
REAL = {"F32": "blk.3.ffn_norm.weight", "Q8_0": "token_embd.weight", "Q4_1": "blk.7.attn_k.weight"}
QUANTISABLE = ("F16", "BF16", "Q4_0", "Q4_1", "Q8_0")


def reference(stored: np.ndarray, kind: str) -> torch.Tensor:
    """gguf's own dequantisation, as a float32 tensor."""
    values = gguf.quants.dequantize(stored, gguf.GGMLQuantizationType[kind])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def ours(stored: np.ndarray, kind: str, shape: tuple[int, ...], **kwargs: object) -> torch.Tensor:
    raw = torch.from_numpy(np.ascontiguousarray(stored).view(np.uint8).reshape(-1).copy())
    return dequantize(raw, int(gguf.GGMLQuantizationType[kind]), shape, **kwargs)  # type: ignore[arg-type]


def test_every_issue_type_is_supported() -> None:
    names = {t.name for t in QUANT_TYPES.values()}
    assert names == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"}
    for t in QUANT_TYPES.values():  # ids and block sizes agree with gguf's tables
        qtype = gguf.GGMLQuantizationType[t.name]
        assert t.type_id == int(qtype)
        assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[qtype]


@pytest.mark.parametrize("kind", sorted(REAL))
def test_real_smollm2_tensors_match_gguf(smollm2_file: GGUFFile, kind: str) -> None:
    tensor = smollm2_file.tensors[REAL[kind]]
    assert tensor.type_name == kind
    stored = tensor.raw.numpy().reshape(tensor.shape[0] if len(tensor.shape) > 1 else 1, -1)
    if kind == "F32":
        stored = stored.view(np.float32)
    expected = reference(stored, kind).reshape(tensor.shape)
    got = dequantize(tensor.raw, tensor.type_id, tensor.shape)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", QUANTISABLE)
def test_quantised_blocks_match_gguf(kind: str) -> None:
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    values[0, :64] = 0.0  # all-zero blocks (scale 0)
    stored = gguf.quants.quantize(values, gguf.GGMLQuantizationType[kind])
    expected = reference(stored, kind)
    assert torch.equal(ours(stored, kind, (6, 512)), expected)
    if kind not in ("F16", "BF16"):  # a real quantisation: close to the input, not equal
        error = (expected - torch.from_numpy(values)).abs().max()
        assert 0 < error < 0.15 * np.abs(values).max()


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_random_k_quant_blocks_match_gguf(kind: str) -> None:
    stored = random_k_blocks(8, 1024, kind, seed=3)
    expected = reference(stored, kind)
    got = ours(stored, kind, (8, 1024))
    assert torch.equal(got, expected)
    assert expected.std() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_the_float32_result_rounded(dtype: torch.dtype) -> None:
    stored = random_k_blocks(4, 512, "Q6_K", seed=4)
    full = ours(stored, "Q6_K", (4, 512))
    assert torch.equal(ours(stored, "Q6_K", (4, 512), dtype=dtype), full.to(dtype))


def test_chunked_decoding_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = gguf.quants.quantize(
        np.random.default_rng(5).standard_normal((10, 96)).astype(np.float32),
        gguf.GGMLQuantizationType.Q4_1,
    )
    whole = ours(stored, "Q4_1", (10, 96))
    monkeypatch.setattr(dequant_module, "_CHUNK_VALUES", 64)  # 2 blocks per chunk, 15 chunks
    assert torch.equal(ours(stored, "Q4_1", (10, 96)), whole)


def test_decodes_into_rows_of_a_larger_tensor() -> None:
    values = np.random.default_rng(6).standard_normal((2, 32)).astype(np.float32)
    stored = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
    target = torch.zeros(5, 32)
    ours(stored, "Q8_0", (2, 32), out=target[1:3])
    assert torch.equal(target[1:3], reference(stored, "Q8_0"))
    assert target[0].eq(0).all() and target[3:].eq(0).all()


def test_unsupported_type_is_named() -> None:
    raw = torch.zeros(22, dtype=torch.uint8)  # one Q5_0 block
    with pytest.raises(CheckpointError, match=r"Q5_0 is not supported.*Q4_K"):
        dequantize(raw, int(gguf.GGMLQuantizationType.Q5_0), (32,), type_name="Q5_0")


def test_wrong_byte_count_is_refused() -> None:
    with pytest.raises(CheckpointError, match="should hold 68 bytes, found 60"):
        dequantize(torch.zeros(60, dtype=torch.uint8), 8, (2, 32))
