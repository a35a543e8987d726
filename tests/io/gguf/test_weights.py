"""Tiny Llamas written as GGUF (every supported type) load back to the HF model's logits.

The file is written the way llama.cpp's converter writes it (its own `permute` on Q and
K), so these tests check the permutation is undone, fused matrices are stacked in
lmscope's order, tied and untied heads, and each tensor type, against `transformers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.io.gguf import load_gguf
from lmscope.io.gguf.weights import unpermute_rows
from tests.io.gguf.synthetic import SHAPE, permute, tiny_llama_gguf

pytest.importorskip("transformers")

#: Tensor types per variant: every supported type appears in one of them.
VARIANTS = {
    "f32-untied": ({}, False),
    "f16-bf16-tied": ({"attn_q": "F16", "attn_k": "BF16", "ffn_up": "F16"}, True),
    "q8_0-q4_0-q4_1": (
        {"token_embd": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q8_0",
         "ffn_gate": "Q4_1", "output": "Q4_0"},
        False,
    ),
    "q4_k": ({"ffn_down": "Q4_K", "attn_output": "Q8_0"}, True),
    "q6_k": ({"ffn_down": "Q6_K", "ffn_gate": "Q4_0"}, False),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tmp_path: Path, variant: str) -> None:
    types, tied = VARIANTS[variant]
    hf = tiny_llama_gguf(tmp_path / "tiny.gguf", types=types, tied=tied)
    model = load_gguf(tmp_path / "tiny.gguf")
    assert model.cfg.tie_embeddings is tied
    tokens = torch.randint(0, SHAPE["vocab"], (2, 24))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    # The weights themselves are the HF checkpoint's, bit for bit (Q/K un-permuted).
    attn = model.blocks[1].attn
    q_dim, kv_dim = attn.q_dim, attn.kv_dim
    hf_attn = hf.model.layers[1].self_attn
    assert torch.equal(attn.qkv.weight[:q_dim], hf_attn.q_proj.weight)
    assert torch.equal(attn.qkv.weight[q_dim : q_dim + kv_dim], hf_attn.k_proj.weight)
    assert torch.equal(model.blocks[0].mlp.fc_in.weight[: SHAPE["d_mlp"]],
                       hf.model.layers[0].mlp.gate_proj.weight)  # fmt: skip


def test_dtype_and_aligned_fresh_memory(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "tiny.gguf", types={"attn_q": "Q8_0"})
    full = load_gguf(tmp_path / "tiny.gguf")
    half = load_gguf(tmp_path / "tiny.gguf", dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(full.named_parameters(), half.named_parameters(), strict=True):
        assert b.dtype == torch.bfloat16, name
        assert torch.equal(a.to(torch.bfloat16), b), name
        assert a.data_ptr() % 64 == 0, name  # not a view into the memory-mapped file
    assert not full.training


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_unpermute_inverts_llama_cpp_permute(heads: int) -> None:
    weight = np.random.default_rng(heads).standard_normal((heads * 8, 5)).astype(np.float32)
    gguf_order = torch.from_numpy(permute(weight, heads))
    assert not torch.equal(gguf_order, torch.from_numpy(weight))
    assert torch.equal(unpermute_rows(gguf_order, heads), torch.from_numpy(weight))
    out = torch.empty(heads * 8, 5)
    assert unpermute_rows(gguf_order, heads, out=out) is out
    assert torch.equal(out, torch.from_numpy(weight))
