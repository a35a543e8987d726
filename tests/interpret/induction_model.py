"""A 2-layer attention-only model built by hand, with heads of known kinds.

Residual stream: four one-hot subspaces of the vocabulary (V) and positions (N):

    TOK [0, V) | POS [V, V+N) | PREV [V+N, 2V+N) | OUT [2V+N, 3V+N)

Every head's query and key read one-hot subspaces, so each score is 0 or a multiple of
``C`` and each pattern is one-hot up to ``e^-C/2`` (C = 30, attention_scale = 1):

- layer 0 head 0, previous token: query pos i, key pos j -> C when j = i - 1. Its OV
  copies TOK of the attended token into PREV (what the induction head keys on).
- layer 0 head 1 and layer 1 heads 1-3: attend to themselves (query pos i, key pos i).
- layer 0 head 2, first token: every query matches key position 0.
- layer 0 head 3, duplicate token: query TOK matches key TOK (C), the query's own
  position is pushed down by C/2: earlier copies win, the token itself is the fallback.
- layer 1 head 0, induction (K-composition with layer 0 head 0): query TOK matches
  key PREV (C): it attends to the token after an earlier occurrence of its own token,
  with itself as the fallback (C/2). Its OV copies that token into OUT, which the
  unembedding reads (x10), so on ``R + R`` the second copy is predicted almost exactly.
"""

from __future__ import annotations

import torch

from lmscope import ModelConfig
from lmscope.model import build_model
from lmscope.model.base import BaseTransformer

V, N, C = 48, 40, 30.0
TOK, POS, PREV, OUT = 0, V, V + N, 2 * V + N
D_MODEL, D_HEAD = 3 * V + N, V + N
BOS = 0

#: (layer, head) of each planted kind.
PREVIOUS, FIRST, DUPLICATE, INDUCTION = (0, 0), (0, 2), (0, 3), (1, 0)
SELF_HEADS = [(0, 1), (1, 1), (1, 2), (1, 3)]


def config(causal: bool = True) -> ModelConfig:
    """The shape of the hand-built model (causal decoder, or the same as an encoder)."""
    return ModelConfig(
        vocab_size=V,
        d_model=D_MODEL,
        n_layers=2,
        n_heads=4,
        d_head=D_HEAD,
        max_seq_len=N,
        positional="learned",
        norm="none",
        attn_only=True,
        tie_embeddings=False,
        qkv_bias=False,
        attn_out_bias=False,
        attention_scale=1.0,
        architecture="decoder" if causal else "encoder",
        causal=causal,
        mlm_head=False,
    )


def _self(attn: torch.nn.Module, head: int) -> None:
    for i in range(N):
        attn.W_Q[head][POS + i, i] = C
        attn.W_K[head][POS + i, i] = 1.0


@torch.no_grad()
def induction_model(causal: bool = True) -> BaseTransformer:
    """The model described in the module docstring (eval mode, float32)."""
    model = build_model(config(causal)).eval()
    for p in model.parameters():
        p.zero_()
    for t in range(V):
        model.embed.weight[t, TOK + t] = 1.0
        if model.unembed is not None:
            model.unembed.weight[t, OUT + t] = 10.0
    for i in range(N):
        model.pos_embed.weight[i, POS + i] = 1.0

    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    # Layer 0 head 0: previous token, copying TOK into PREV.
    for i in range(N):
        a0.W_Q[0][POS + i, i] = C
        if i + 1 < N:
            a0.W_K[0][POS + i, i + 1] = 1.0
    for t in range(V):
        a0.W_V[0][TOK + t, t] = 1.0
        a0.W_O[0][t, PREV + t] = 1.0
    _self(a0, 1)
    # Layer 0 head 2: first token.
    for i in range(N):
        a0.W_Q[2][POS + i, 0] = C
    a0.W_K[2][POS + 0, 0] = 1.0
    # Layer 0 head 3: duplicate token (own position at C/2 as the fallback).
    for t in range(V):
        a0.W_Q[3][TOK + t, t] = C
        a0.W_K[3][TOK + t, t] = 1.0
    for i in range(N):
        a0.W_Q[3][POS + i, V + i] = -C / 2
        a0.W_K[3][POS + i, V + i] = 1.0
    # Layer 1 head 0: induction, keyed on PREV, copying TOK into OUT.
    for t in range(V):
        a1.W_Q[0][TOK + t, t] = C
        a1.W_K[0][PREV + t, t] = 1.0
        a1.W_V[0][TOK + t, t] = 1.0
        a1.W_O[0][t, OUT + t] = 1.0
    for i in range(N):
        a1.W_Q[0][POS + i, V + i] = C / 2
        a1.W_K[0][POS + i, V + i] = 1.0
    for head in (1, 2, 3):
        _self(a1, head)
    return model
