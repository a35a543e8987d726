"""Projection weights stored [in, out]: same values, same numbers, kept through use."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmscope
from lmscope.model.layout import (
    column_major,
    is_column_major,
    projection_weights,
    use_column_major,
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


@pytest.mark.parametrize("preset", PRESETS)
def test_built_models_store_projections_column_major(preset: str) -> None:
    model = lmscope.build_model(small(preset), seed=0)
    weights = projection_weights(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) >= len({id(m.weight) for m in linears})
    assert all(is_column_major(w) for w in weights)
    # Everything else is plain contiguous.
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    assert all(p.is_contiguous() for p in others)


def test_seeded_init_is_independent_of_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values are drawn in shape order before the weights are re-stored: a seed gives
    the same model as a plain row-major build."""
    model = lmscope.build_model(small("gpt2-small"), seed=3)
    monkeypatch.setattr("lmscope.model.base.use_preferred_layout", lambda m: m)
    plain = lmscope.build_model(small("gpt2-small"), seed=3)
    assert all(p.is_contiguous() for p in plain.parameters())
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_equal_row_major_model(preset: str) -> None:
    model = lmscope.build_model(small(preset, init_std=0.2), seed=0).eval()
    plain = use_row_major(copy.deepcopy(model))
    assert all(p.is_contiguous() for p in plain.parameters())
    tokens = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if model.cfg.architecture == "encoder-decoder":
            a, b = (
                model(tokens, decoder_tokens=tokens[:, :4]),
                plain(tokens, decoder_tokens=tokens[:, :4]),
            )
        else:
            a, b = model(tokens), plain(tokens)
    assert (a - b).abs().max() <= 1e-5
    assert use_column_major(plain) is plain and all(
        is_column_major(w) for w in projection_weights(plain)
    )


def test_training_keeps_the_layout_and_matches_row_major() -> None:
    model = lmscope.build_model(small("llama-tiny"), seed=0)
    plain = use_row_major(copy.deepcopy(model))
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


def test_dtype_change_save_and_load_keep_the_layout(tmp_path: Path) -> None:
    model = lmscope.build_model(small("gpt2-small"), seed=0)
    # bf16 products on CPU are much slower [in, out]: lower precision goes row-major,
    # and back to float32 goes column-major again.
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert all(w.is_contiguous() for w in projection_weights(half))
    assert all(is_column_major(w) for w in projection_weights(half.float()))
    assert torch.equal(half.float().blocks[0].attn.qkv.weight, half.blocks[0].attn.qkv.weight)
    model.save(tmp_path / "m")
    loaded = lmscope.load(tmp_path / "m")
    assert all(is_column_major(w) for w in projection_weights(loaded))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_cpu_bf16_training_uses_row_major(tmp_path: Path) -> None:
    from lmscope.train import train
    from lmscope.train.config import TrainConfig

    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 300)
    seen = []
    cfg = TrainConfig(
        data=str(text),
        batch_size=2,
        block_size=8,
        max_steps=2,
        eval_every=2,
        eval_batches=1,
        precision="bf16",
        device="cpu",
        compile=False,
    )

    def record(trainer) -> None:
        seen.append([w.is_contiguous() for w in projection_weights(trainer.model)])

    train(
        small("llama-tiny", max_seq_len=8),
        cfg,
        out=tmp_path / "run",
        show_progress=False,
        on_step=record,
    )
    assert seen and all(all(step) for step in seen)
