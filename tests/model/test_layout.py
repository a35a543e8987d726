"""Projection weights stored [in, out] for fp32 decoding on CPU: same values, same
numbers, applied by `generate` once and undone where that order is slow."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmscope
from lmscope.generate import generate
from lmscope.model.layout import (
    column_major,
    is_column_major,
    projection_weights,
    use_preferred_layout,
    use_row_major,
)
from tests.conftest import small

PRESETS = ["gpt2-small", "llama-tiny", "mixtral-tiny", "bert-base", "t5-small"]


def test_column_major_keeps_values_and_shape() -> None:
    w = torch.randn(5, 3)
    c = column_major(w)
    assert c.shape == (5, 3) and c.stride() == (1, 5) and torch.equal(c, w)
    assert is_column_major(c) and not is_column_major(w)
    assert column_major(c) is c  # already in that order: no copy


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-tiny", "mixtral-tiny"])
def test_generate_restores_fp32_cpu_weights_once(preset: str) -> None:
    model = lmscope.build_model(small(preset, tie_embeddings=False, init_std=0.2), seed=0)
    assert all(p.is_contiguous() for p in model.parameters())  # built row-major
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = projection_weights(model)
    linears = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= {id(w) for w in weights}
    assert any(model.unembed.weight is w for w in weights)
    first = generate(model, [[1, 2, 3, 4]], max_new_tokens=8).new_tokens
    assert all(is_column_major(w) for w in weights)
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    assert all(p.is_contiguous() for p in others)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert generate(model, [[1, 2, 3, 4]], max_new_tokens=8).new_tokens == first
    # The parameters are the same objects (optimizers and ties stay valid), and not
    # inference tensors: the model still trains.
    assert all(a is b for a, b in zip(weights, projection_weights(model), strict=True))
    model.train()
    loss = model(torch.tensor([[1, 2, 3]])).logsumexp(-1).mean()
    loss.backward()
    assert weights[0].grad is not None and weights[0].grad.stride() == weights[0].stride()


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_equal_row_major_model(preset: str) -> None:
    model = lmscope.build_model(small(preset, init_std=0.2), seed=0).eval()
    fast = use_preferred_layout(copy.deepcopy(model))
    assert all(is_column_major(w) for w in projection_weights(fast))
    tokens = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if model.cfg.architecture == "encoder-decoder":
            start = tokens[:, :4]
            a, b = fast(tokens, decoder_tokens=start), model(tokens, decoder_tokens=start)
        else:
            a, b = fast(tokens), model(tokens)
    assert (a - b).abs().max() <= 1e-5
    assert all(p.is_contiguous() for p in use_row_major(fast).parameters())


def test_training_keeps_the_layout_and_matches_row_major() -> None:
    plain = lmscope.build_model(small("llama-tiny"), seed=0)
    model = use_preferred_layout(copy.deepcopy(plain))
    tokens = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for m in (model, plain):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            logits = m(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 61), tokens[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    qkv = model.blocks[0].attn.qkv.weight
    assert is_column_major(qkv) and qkv.grad is not None and qkv.grad.stride() == qkv.stride()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert (a - b).abs().max() <= 1e-5


def test_other_dtypes_go_back_to_row_major_and_files_are_plain(tmp_path: Path) -> None:
    model = use_preferred_layout(lmscope.build_model(small("gpt2-small"), seed=0))
    # bf16 products on CPU are much slower [in, out]: a dtype change restores row-major,
    # and float32 again stays row-major until the next generate.
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert all(w.is_contiguous() for w in projection_weights(half))
    assert torch.equal(half.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight.bfloat16())
    assert all(w.is_contiguous() for w in projection_weights(half.float()))
    same = copy.deepcopy(model).to(torch.float32)  # fp32 on CPU: the fast order stays
    assert all(is_column_major(w) for w in projection_weights(same))
    model.save(tmp_path / "m")
    loaded = lmscope.load(tmp_path / "m")
    assert all(p.is_contiguous() for p in loaded.parameters())
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
