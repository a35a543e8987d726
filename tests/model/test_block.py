"""Block wirings: pre-norm, post-norm and parallel, checked against their formulas."""

from __future__ import annotations

import torch

from lmscope.model import Block
from lmscope.model.masking import build_context
from tests.conftest import small


def _ctx(n: int):
    pos = torch.arange(n)[None]
    return build_context(q_pos=pos, k_pos=pos, k_valid=None, causal=True)


def _randomise(block: Block) -> Block:
    for name, p in block.named_parameters():
        if "ln" not in name:
            torch.nn.init.normal_(p, std=0.2)
    return block.eval()


def test_pre_norm_block_formula() -> None:
    block = _randomise(Block(small("gpt2-small"), 0))
    x, ctx = torch.randn(2, 5, 32), _ctx(5)
    mid = x + block.attn(block.ln1(x), ctx)
    torch.testing.assert_close(block(x, ctx), mid + block.mlp(block.ln2(mid)))


def test_post_norm_block_formula() -> None:
    block = _randomise(Block(small("bert-base"), 0))
    x, ctx = torch.randn(2, 5, 32), _ctx(5)
    mid = block.ln1(x + block.attn(x, ctx))
    torch.testing.assert_close(block(x, ctx), block.ln2(mid + block.mlp(mid)))


def test_parallel_block_formula_and_it_differs_from_sequential() -> None:
    cfg = small("gpt2-small", parallel_attn_mlp=True)
    block = _randomise(Block(cfg, 0))
    x, ctx = torch.randn(2, 5, 32), _ctx(5)
    expected = x + block.attn(block.ln1(x), ctx) + block.mlp(block.ln2(x))
    torch.testing.assert_close(block(x, ctx), expected)
    sequential = Block(small("gpt2-small"), 0).eval()
    sequential.load_state_dict(block.state_dict())
    assert (sequential(x, ctx) - block(x, ctx)).abs().max() > 1e-3
    assert "hook_resid_mid" not in dict(block.named_modules())


def test_parallel_block_with_shared_norm_has_one_norm_gpt_j() -> None:
    cfg = small("gpt2-small", parallel_attn_mlp=True, parallel_shared_norm=True)
    block = _randomise(Block(cfg, 0))
    assert not hasattr(block, "ln2")
    x, ctx = torch.randn(2, 5, 32), _ctx(5)
    h = block.ln1(x)
    torch.testing.assert_close(block(x, ctx), x + block.attn(h, ctx) + block.mlp(h))


def test_attention_only_block_adds_only_attention() -> None:
    block = _randomise(Block(small("attn-only-2l"), 0))
    x, ctx = torch.randn(1, 4, 32), _ctx(4)
    torch.testing.assert_close(block(x, ctx), x + block.attn(block.ln1(x), ctx))
    assert block.mlp is None


def test_decoder_block_with_cross_attention_uses_ln1_ln2_ln3() -> None:
    cfg = small("t5-small")
    block = _randomise(Block(cfg, 0, cross_attention=True))
    x, source = torch.randn(1, 4, 32), torch.randn(1, 6, 32)
    ctx = _ctx(4)
    cross = build_context(
        q_pos=torch.arange(4)[None], k_pos=torch.arange(6)[None], k_valid=None, causal=False
    )
    mid = x + block.attn(block.ln1(x), ctx)
    mid_cross = mid + block.cross_attn(block.ln2(mid), cross, source=source)
    expected = mid_cross + block.mlp(block.ln3(mid_cross))
    torch.testing.assert_close(block(x, ctx, source=source, cross_ctx=cross), expected)


def test_post_norm_attention_only_block_still_normalises() -> None:
    block = _randomise(Block(small("attn-only-2l", norm_placement="post"), 0))
    x, ctx = torch.randn(1, 4, 32), _ctx(4)
    torch.testing.assert_close(block(x, ctx), block.ln1(x + block.attn(x, ctx)))
