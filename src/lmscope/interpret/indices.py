"""Checked lookups of layers, heads, MLPs and neurons, shared by the analyses.

Analyses take ``(layer, head)`` or ``(layer, neuron)`` from users; a wrong index should
say what range is allowed, not fail deep inside a forward pass with an IndexError.
Negative indices count from the end, as in Python (``layer=-1`` is the last layer).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmscope.errors import LmscopeError
from lmscope.model.mlp import MLP


def blocks_of(model: Any) -> nn.ModuleList:
    """The block stack of a single-stack model (decoder-only or encoder-only)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        arch = getattr(getattr(model, "cfg", None), "architecture", type(model).__name__)
        raise LmscopeError(
            f"this analysis needs a decoder-only or encoder-only model with one block "
            f"stack; got {arch!r}."
        )
    return blocks


def check_layer(model: Any, layer: int) -> int:
    """`layer` as a non-negative index into the model's blocks (negative counts back)."""
    n = len(blocks_of(model))
    if not -n <= layer < n:
        raise LmscopeError(f"layer {layer} does not exist: this model has layers 0..{n - 1}.")
    return layer % n


def check_head(model: Any, head: int) -> int:
    """`head` as a non-negative query-head index (negative counts back)."""
    n = model.cfg.n_heads
    if not -n <= head < n:
        raise LmscopeError(f"head {head} does not exist: each layer has heads 0..{n - 1}.")
    return head % n


def mlp_at(model: Any, layer: int) -> MLP:
    """The dense MLP of block `layer` (an error for attention-only blocks and MoE)."""
    layer = check_layer(model, layer)
    mlp = blocks_of(model)[layer].mlp
    if mlp is None:
        raise LmscopeError(f"layer {layer} has no MLP (attention-only model): neurons need an MLP.")
    if not isinstance(mlp, MLP):
        raise LmscopeError(
            f"layer {layer}'s MLP is a {type(mlp).__name__} (mixture of experts): neuron "
            "analyses need a dense MLP, whose neurons are shared by every token."
        )
    return mlp


def check_neuron(mlp: MLP, neuron: int, layer: int) -> int:
    """`neuron` as a non-negative index into `mlp`'s hidden units (negative counts back)."""
    n = mlp.d_mlp
    if not -n <= neuron < n:
        raise LmscopeError(
            f"neuron {neuron} does not exist: layer {layer}'s MLP has neurons 0..{n - 1}."
        )
    return neuron % n
