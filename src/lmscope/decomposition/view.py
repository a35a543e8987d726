"""What the decompositions read: the model's structure, cached tensors, slices, norms.

`CacheView` is the base of `ResidualDecomposition` (and so of `ActivationCache`): it
checks that the model is one pre-norm stack, fetches cached tensors with errors that
say what to cache, and scales stacks by a norm's cached scale (`apply_ln_to_stack`) or
projects them on unembedding directions (`logit_attrs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lmscope.errors import LmscopeError

if TYPE_CHECKING:
    from lmscope.model.block import Block

#: A TransformerLens slice: None (all), an int (one index: the dim disappears), a tuple
#: ``(stop,)``, ``(start, stop[, step])``, a `slice`, or a list / tensor of indices.
SliceInput = int | tuple[int | None, ...] | slice | Sequence[int] | Tensor | None


def apply_slice(tensor: Tensor, spec: SliceInput, dim: int) -> Tensor:
    """Index `tensor` along `dim` with a TransformerLens slice (see `SliceInput`)."""
    if spec is None:
        return tensor
    if isinstance(spec, tuple):
        spec = slice(*spec)
    elif isinstance(spec, Sequence):
        spec = torch.tensor(list(spec), dtype=torch.long)
    index: list[Any] = [slice(None)] * tensor.ndim
    index[dim] = spec.to(tensor.device) if isinstance(spec, Tensor) else spec
    return tensor[tuple(index)]


class CacheView:
    """Structure checks, cached-tensor access, norms and unembedding for the decompositions."""

    model: nn.Module
    has_batch_dim: bool
    cache_dict: dict[str, Tensor]

    def _blocks(self) -> list[Block]:
        """The model's blocks; refuses models that are not one pre-norm stack."""
        blocks = getattr(self.model, "blocks", None)
        cfg = getattr(self.model, "cfg", None)
        if blocks is None or cfg is None or not hasattr(self.model, "ln_final"):
            raise LmscopeError(
                f"residual-stream decompositions need a decoder-only or encoder-only model; "
                f"{type(self.model).__name__} has no single stack of blocks."
            )
        if cfg.norm_placement != "pre":
            raise LmscopeError(
                "residual-stream decompositions need pre-norm blocks: in a post-norm block "
                "(BERT) the norm sits on the residual path, so the stream is not a sum of "
                "the components' writes."
            )
        if cfg.embedding_norm or cfg.n_token_types:
            raise LmscopeError(
                "residual-stream decompositions need the first block's input to be "
                "embed + pos_embed; this model normalises its embeddings or adds token-type "
                "embeddings (not hooked)."
            )
        return list(blocks)

    def _depth(self) -> int:
        """Number of blocks (any single-stack model; no pre-norm requirement)."""
        blocks = getattr(self.model, "blocks", None)
        if blocks is None:
            self._blocks()  # raises the clear error
        return len(blocks)  # type: ignore[arg-type]

    def _layer(self, layer: int | None) -> int:
        """A stack depth in [0, n_layers]: None and -1 mean after the last block."""
        n = self._depth()
        resolved = n if layer is None else (n + 1 + layer if layer < 0 else layer)
        if not 0 <= resolved <= n:
            raise LmscopeError(
                f"layer={layer!r} is invalid: use 0..{n} (the input of that block; {n} or "
                f"-1 or None: after the last block), or a negative count from there."
            )
        return resolved

    def _parallel(self) -> bool:
        return bool(self.model.cfg.parallel_attn_mlp)

    def _has_mlp(self) -> bool:
        return not self.model.cfg.attn_only

    def _get(self, name: str, why: str) -> Tensor:
        """A cached tensor that an analysis needs, with an error naming what to cache."""
        if name not in self.cache_dict:
            raise LmscopeError(
                f"{why} needs {name!r}, which is not in this cache: run run_with_cache "
                "with it in names_filter (or without a names_filter)."
            )
        return self.cache_dict[name]

    def _empty(self, pos_slice: SliceInput) -> Tensor:
        """A 0-component stack of the shape the others have (for a layer-0 stack)."""
        like = apply_slice(self._get("hook_embed", "an empty stack"), pos_slice, -2)
        return like.new_zeros(0, *like.shape)

    def _check_mlp_input(self, layer: int, mlp_input: bool) -> None:
        if mlp_input and layer == self._depth():
            raise LmscopeError(
                "mlp_input=True needs a layer below n_layers (the unembed has no MLP)."
            )

    # --- norms and logits ---------------------------------------------------------------
    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        """Scale a stack ``[component, *batch, pos, d_model]`` as the input of a norm.

        The norm is block `layer`'s ``ln1`` (its MLP norm with `mlp_input`), or
        ``ln_final`` for `layer` None / -1 / n_layers. LayerNorm centres each component
        then divides by the cached scale of that position; RMSNorm only divides. The
        norm's weight and bias are not applied. `pos_slice` / `batch_slice` say which
        positions / batch rows the stack holds (`batch_slice` is also applied to the
        stack when it `has_batch_dim`). `recompute_ln` (final layer only): run
        ``ln_final`` on each component instead, with its own statistics.
        """
        blocks = self._blocks()
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        if has_batch_dim:
            residual_stack = apply_slice(residual_stack, batch_slice, 1)
        if layer == len(blocks):
            norm, name = self.model.ln_final, "ln_final"
        else:
            leaf = blocks[layer].mlp_norm_name if mlp_input else "ln1"
            norm, name = getattr(blocks[layer], leaf), f"blocks.{layer}.{leaf}"
        if self.model.cfg.norm == "none" or isinstance(norm, nn.Identity):
            return residual_stack
        if recompute_ln and layer == len(blocks):
            return norm(residual_stack)
        if self.model.cfg.norm == "layernorm":  # RMSNorm does not centre
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        scale = apply_slice(self._get(f"{name}.hook_scale", "apply_ln"), pos_slice, -2)
        if self.has_batch_dim:
            scale = apply_slice(scale, batch_slice, 0)
        return residual_stack / scale

    def logit_attrs(
        self,
        residual_stack: Tensor,
        tokens: int | Tensor,
        incorrect_tokens: int | Tensor | None = None,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """How much each component of a stack writes along the unembedding of `tokens`.

        ``(apply_ln_to_stack(stack, final) * W_U[:, tokens]).sum(-1)``:
        ``[component, *batch, pos]``. `tokens`: one id, ``[batch]`` (with a stack over one
        position) or ``[batch, pos]``. With `incorrect_tokens` (same shape) the direction
        is ``W_U[:, tokens] - W_U[:, incorrect_tokens]``: a logit difference.
        """
        direction = self._unembed_directions(tokens)
        if incorrect_tokens is not None:
            if torch.as_tensor(tokens).shape != torch.as_tensor(incorrect_tokens).shape:
                raise LmscopeError(
                    "tokens and incorrect_tokens must have the same shape: "
                    f"{tuple(torch.as_tensor(tokens).shape)} vs "
                    f"{tuple(torch.as_tensor(incorrect_tokens).shape)}."
                )
            direction = direction - self._unembed_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack,
            None,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        return (scaled * direction.to(scaled)).sum(-1)

    def _unembed_directions(self, tokens: int | Tensor) -> Tensor:
        """``W_U[:, tokens]`` moved to ``[*tokens.shape, d_model]`` (``[d_model]`` for one)."""
        if isinstance(tokens, str):
            raise LmscopeError("logit_attrs takes token ids; encode the text with the tokenizer.")
        W_U = self.model.W_U.detach()
        tokens = torch.as_tensor(tokens, device=W_U.device)
        if tokens.numel() == 1:
            return W_U[:, tokens.reshape(()).item()]
        return W_U[:, tokens].movedim(0, -1)
