"""E4: one post-norm block on two tokens, all weights identity (document 000, section 6).

A real `Block` with ``norm='none'`` (LayerNorm replaced by identity, as the problem
says), ``W_Q = W_K = W_V = W_O = I`` and an MLP with ``W1 = W2 = I``. The document
then makes two mistakes, which the example shows by forcing its claimed attention
weights into the same block: even with them the block gives ``4x``, not ``3x``.
"""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.explain.data import (
    Array,
    Discrepancy,
    Example,
    Step,
    check,
    quietly,
    recording,
    values,
    zero_,
)
from lmscope.model.block import Block
from lmscope.model.masking import build_context
from lmscope.model.mlp import MLP

TOKENS = ["x1", "x2"]
DIMS = ["d0", "d1"]


def _block() -> Block:
    cfg = ModelConfig(
        d_model=2,
        n_heads=1,
        d_head=2,
        d_mlp=2,
        n_layers=1,
        norm="none",
        norm_placement="post",
        activation="relu",
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        causal=False,
        positional="none",
        attn_impl="explicit",
    )
    block = zero_(quietly(lambda: Block(cfg, layer=0)))
    assert isinstance(block, Block) and isinstance(block.mlp, MLP)
    eye = torch.eye(2)
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([eye, eye, eye]))  # W_Q = W_K = W_V = I
        block.attn.out.weight.copy_(eye)
        block.mlp.fc_in.weight.copy_(eye)
        block.mlp.fc_out.weight.copy_(eye)
    return block


def _run(block: Block, x: torch.Tensor, pattern: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One forward, recording the block's hooks; `pattern` replaces the softmax if given."""
    assert isinstance(block.mlp, MLP)
    points = {
        "scores": block.attn.hook_attn_scores,
        "pattern": block.attn.hook_pattern,
        "attn_out": block.hook_attn_out,
        "resid_mid": block.hook_resid_mid,
        "mlp_post": block.mlp.hook_post,
        "mlp_out": block.hook_mlp_out,
        "resid_post": block.hook_resid_post,
    }
    pos = torch.arange(x.shape[1])[None]
    ctx = build_context(q_pos=pos, k_pos=pos, k_valid=None, causal=False)
    handle = None
    if pattern is not None:
        forced = pattern[None, None]  # [batch, head, q, k]
        handle = block.attn.hook_pattern.add_hook(lambda p, hook: forced.to(p.dtype))
    try:
        with torch.no_grad(), recording(points) as seen:
            out = block(x, ctx)
    finally:
        if handle is not None:
            handle.remove()
    seen["out"] = out
    return {k: v[0] if k != "scores" and k != "pattern" else v[0, 0] for k, v in seen.items()}


def e4_block() -> Example:
    """Attention, residual and ReLU FFN of one post-norm block on x1 = [1,0], x2 = [0,1]."""
    block = _block()
    x = torch.eye(2)[None]  # [batch, pos, d_model]
    got = _run(block, x, None)
    doc = _run(block, x, torch.eye(2))  # the document's claimed one-hot weights
    mat = {"rows": TOKENS, "cols": DIMS}
    keys = {"rows": TOKENS, "cols": ["to x1", "to x2"]}
    return Example(
        id="E4",
        title="One full block on two tokens",
        source='000, "Worked Example Problem"',
        modules="Block(d_model=2, one head, d_mlp=2, ReLU, norm='none', post-norm, no "
        "biases); W_Q = W_K = W_V = W_O = I, W1 = W2 = I",
        steps=[
            Step(
                "Input", "Q = K = V = X, as the document says.", [Array("X", values(x[0]), **mat)]
            ),
            Step(
                "Scores",
                "QK^T = I, scaled by 1/sqrt(d_k) = 1/sqrt(2) (hook_attn_scores).",
                [Array("scores", values(got["scores"]), **keys)],
            ),
            Step(
                "Attention weights",
                "Row-wise softmax of [0.707, 0] is [0.67, 0.33], not one-hot: a softmax "
                "only approaches one-hot when the scores differ by much more than 1.",
                [Array("weights", values(got["pattern"]), **keys)],
            ),
            Step(
                "Attention output",
                "o = weights @ V, then W_O = I (hook_attn_out).",
                [Array("o", values(got["attn_out"]), **mat)],
            ),
            Step(
                "Residual",
                "z = x + o (hook_resid_mid; the norm is identity).",
                [Array("z", values(got["resid_mid"]), **mat)],
            ),
            Step(
                "FFN",
                "ReLU(z W1) W2 with identity weights gives z back (all entries are "
                "positive), hook_mlp_out.",
                [Array("FFN(z)", values(got["mlp_out"]), **mat)],
            ),
            Step(
                "Second residual",
                "y = z + FFN(z) = 2z (hook_resid_post).",
                [Array("y", values(got["resid_post"]), **mat)],
            ),
        ],
        discrepancies=[
            Discrepancy(
                "attention weights",
                [[1.0, 0.0], [0.0, 1.0]],
                values(got["pattern"]),
                "softmax([0.707, 0]) is [0.670, 0.330], not one-hot.",
            ),
            Discrepancy(
                "attention output o",
                [[1.0, 0.0], [0.0, 1.0]],
                values(got["attn_out"]),
                "follows from the wrong weights (the document's o = X).",
            ),
            Discrepancy(
                "z = x + o",
                [[2.0, 0.0], [0.0, 2.0]],
                values(got["resid_mid"]),
                "the document's z = 2x follows from the wrong weights.",
            ),
            Discrepancy(
                "block output y",
                "y = 3x = [[3, 0], [0, 3]]",
                values(got["resid_post"]),
                "wrong twice: the weights, and it adds o instead of z at the end "
                "(y = z + FFN(z)). Forcing its one-hot weights into this block gives "
                f"y = {values(doc['resid_post'])} = 4x.",
            ),
        ],
        checks=[
            check("y = z + FFN(z)", got["resid_post"], got["resid_mid"] + got["mlp_out"], 0.0),
            check("block output (norm = identity) is y", got["out"], got["resid_post"], 0.0),
        ],
    )
