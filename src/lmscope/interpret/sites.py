"""Where a patch or an ablation acts: activations by short name, their layout, cells.

Patching and ablation move activations between runs at *sites*: one hook point, and
optionally one head and/or one position of it. This module names the activations the
analyses patch (TransformerLens's short names: ``resid_pre``, ``z``, ``pattern``...),
knows which axis of each hook's tensor holds positions and heads, and turns a set of
sites into a boolean mask, so exact patching, attribution patching and ablations agree
on what "head 3 at position 5 of layer 2" is.

Layouts (``b`` batch, ``p`` positions, ``h`` heads):

==============================  =====================  =========  =====
activation                      hook tensor            positions  heads
==============================  =====================  =========  =====
resid_pre, resid_mid,           ``[b, p, d_model]``    axis 1     --
resid_post, attn_out, mlp_out
q, k, v, z                      ``[b, p, h, d_head]``  axis 1     axis 2
pattern                         ``[b, h, q, k]``       axis 2 (q) axis 1
==============================  =====================  =========  =====

Under grouped-query attention ``k`` and ``v`` have ``n_kv_heads`` heads: their head index
is the key/value head, shared by a group of query heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.errors import LmscopeError, did_you_mean
from lmscope.interpret.indices import blocks_of, check_layer
from lmscope.interpret.tokens import as_token_ids

ActivationName = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"
]
Direction = Literal["denoise", "noise"]
#: Activations with one entry per head (per-head patching and attribution).
HEAD_ACTIVATIONS = ("z", "q", "k", "v", "pattern")
#: A whole-layer activation per layer x position.
LAYER_ACTIVATIONS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Layout:
    """A hook's name inside ``blocks.{i}`` and the axes of its positions and heads."""

    suffix: str
    pos_axis: int
    head_axis: int | None


#: Any ``[batch, pos, ...]`` hook as a whole (a site with no head).
WHOLE = Layout("", 1, None)
LAYOUTS: dict[str, Layout] = {
    **{name: Layout(f"hook_{name}", 1, None) for name in LAYER_ACTIVATIONS},
    **{name: Layout(f"attn.hook_{name}", 1, 2) for name in ("z", "q", "k", "v")},
    "pattern": Layout("attn.hook_pattern", 2, 1),
}


@dataclass(frozen=True)
class Site:
    """One place to patch: a hook, and optionally one head and one position of it."""

    hook: str
    layout: Layout = WHOLE
    head: int | None = None
    position: int | None = None


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """`value` if it is one of `allowed`, else a clear error naming the choices."""
    if value not in allowed:
        hint = did_you_mean(value, allowed)
        raise LmscopeError(
            f"{what} {value!r} is invalid: use one of {', '.join(allowed)}. {hint}".strip()
        )
    return value


def check_direction(direction: str) -> Direction:
    """``"denoise"`` (run corrupted, patch in clean) or ``"noise"`` (the reverse)."""
    check_choice(direction, get_args(Direction), "direction")
    return direction  # type: ignore[return-value]


def layout_of(activation: str) -> Layout:
    """The layout of a short activation name (an error names the allowed ones)."""
    return LAYOUTS[check_choice(activation, list(LAYOUTS), "activation")]


def grid_by_position(activation: str, by_position: bool | None) -> bool:
    """Whether a grid has a position axis: by default yes for whole-layer activations
    (``[layer, position]``), no for per-head ones (``[layer, head]``)."""
    return activation not in HEAD_ACTIVATIONS if by_position is None else by_position


def hook_name(model: Any, activation: str, layer: int) -> str:
    """The full hook name of `activation` at block `layer`, checked to exist in `model`."""
    layout = layout_of(activation)
    name = f"blocks.{check_layer(model, layer)}.{layout.suffix}"
    if name not in model.hook_points():
        why = ""
        if activation == "resid_mid":
            why = " (attention-only and parallel blocks have no resid_mid)"
        elif activation == "mlp_out":
            why = " (attention-only models have no MLP)"
        raise LmscopeError(
            f"this model has no hook {name!r}{why}; patch another activation "
            f"({', '.join(LAYOUTS)})."
        )
    return name


def n_heads_of(model: Any, activation: str) -> int:
    """Heads along the head axis: key/value heads for ``k``/``v``, query heads otherwise."""
    return int(model.cfg.kv_heads if activation in ("k", "v") else model.cfg.n_heads)


def check_head_of(model: Any, activation: str, head: int) -> int:
    """`head` as a non-negative index along `activation`'s head axis."""
    n = n_heads_of(model, activation)
    if isinstance(head, bool) or not isinstance(head, int) or not -n <= head < n:
        kind = "key/value heads" if activation in ("k", "v") and n != model.cfg.n_heads else "heads"
        raise LmscopeError(f"head {head!r} does not exist: {activation} has {kind} 0..{n - 1}.")
    return head % n


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """Every layer (None) or the given ones, checked and non-negative, in the given order."""
    if layers is None:
        return list(range(len(blocks_of(model))))
    checked = [check_layer(model, layer) for layer in layers]
    if not checked:
        raise LmscopeError("layers is empty: give at least one layer, or None for all.")
    return checked


def as_tokens(
    model: Any, tokens: Any, what: str = "tokens", tokenizer: Any | None = None
) -> Int[Tensor, "batch pos"]:
    """`tokens` (text, ids, ``[pos]`` or ``[batch, pos]``) as a long tensor on the model's
    device, ids checked; text needs `tokenizer`."""
    if isinstance(tokens, list | tuple) and tokens and isinstance(tokens[0], list | tuple):
        tokens = torch.tensor(tokens)
    if isinstance(tokens, Tensor) and tokens.dim() == 2 and tokens.shape[0] > 1:
        vocab = model.cfg.vocab_size
        if tokens.is_floating_point() or tokens.shape[1] == 0:
            raise LmscopeError(
                f"{what} must be integer token ids of shape [batch, pos], got a "
                f"{tokens.dtype} tensor of shape {list(tokens.shape)}."
            )
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if bad.numel():
            raise LmscopeError(f"{what}: token id {int(bad[0])} is outside [0, {vocab}).")
        return tokens.long().to(model.device)
    return as_token_ids(tokens, tokenizer, model.cfg.vocab_size).to(model.device).unsqueeze(0)


def check_pair(
    model: Any, clean: Any, corrupted: Any, tokenizer: Any | None = None
) -> tuple[Tensor, Tensor]:
    """Clean and corrupted tokens as ``[batch, pos]`` tensors of the same shape."""
    clean_ids = as_tokens(model, clean, "clean tokens", tokenizer)
    corrupted_ids = as_tokens(model, corrupted, "corrupted tokens", tokenizer)
    if clean_ids.shape != corrupted_ids.shape:
        raise LmscopeError(
            f"clean and corrupted inputs must have the same shape so that positions line up; "
            f"got clean {list(clean_ids.shape)} and corrupted {list(corrupted_ids.shape)} "
            "(batch, tokens). Choose a corrupted prompt with as many tokens (e.g. a subject "
            "of the same token length), or pad the shorter one."
        )
    return clean_ids, corrupted_ids


def site_mask(
    sites: Sequence[Sequence[Site]], hook: str, shape: torch.Size, device: torch.device
) -> Tensor:
    """Where each copy of a batched run patches hook `hook`: bool, ``[copies, 1, *shape]``.

    `sites[k]` lists the sites of copy ``k``; `shape` is the hook's activation shape
    without its batch axis. Broadcast against the activation viewed as
    ``[copies, batch, *shape]``.
    """
    mask = torch.zeros(len(sites), *shape, dtype=torch.bool, device=device)
    for k, copy_sites in enumerate(sites):
        for site in copy_sites:
            if site.hook != hook:
                continue
            index: list[Any] = [k] + [slice(None)] * len(shape)
            # Axes of the activation count its batch axis; the mask's axis 0 is copies.
            if site.position is not None:
                index[site.layout.pos_axis] = site.position
            if site.head is not None:
                assert site.layout.head_axis is not None
                index[site.layout.head_axis] = site.head
            mask[tuple(index)] = True
    return mask.unsqueeze(1)
