"""MLP neurons as key-value memories (Geva et al., 2021, "Transformer Feed-Forward Layers
Are Key-Value Memories").

An MLP computes ``out = sum_i a_i * v_i + b_out`` (worked example E7): neuron ``i``'s
activation ``a_i`` says how well the input matches its *key* (column ``i`` of
``W_in``), and the neuron then writes its *value* (row ``i`` of ``W_out``) scaled by
``a_i``. A "neuron activation" here is ``hook_post``: ``act(x . key_i + b_i)`` for a
dense MLP, ``act(x . gate_i) * (x . key_i)`` for a gated one (SwiGLU, GeGLU), which is
the factor its value is multiplied by in either case. This module looks at a neuron
from both ends:

- the inputs that trigger it: `top_activating_contexts` scans a corpus for the k
  tokens where it fires most (the key side, empirically), and `neuron_key_tokens`
  reads the key against the token embeddings (a static proxy: it ignores everything
  earlier layers add to the stream);
- what it writes: `neuron_value_tokens` projects the value through the unembedding
  to the tokens it promotes and suppresses, and `neuron_contributions` gives each
  neuron's write at every position, whole or projected onto a direction (a logit
  direction gives its direct effect on that logit). The writes sum, with ``b_out``,
  to ``hook_mlp_out`` exactly.

Mixture-of-experts MLPs are refused: their neurons belong to experts that only some
tokens reach.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.cache import ActivationCache
from lmscope.errors import LmscopeError
from lmscope.interpret.indices import check_layer, check_neuron, mlp_at
from lmscope.interpret.patching import progress_bar
from lmscope.interpret.tokens import token_labels
from lmscope.model.norm import LayerNorm


def post_hook(layer: int) -> str:
    """Hook name of layer `layer`'s neuron activations."""
    return f"blocks.{layer}.mlp.hook_post"


# --- the value side: what a neuron writes ----------------------------------------------
@dataclass(frozen=True)
class NeuronTokens:
    """Tokens a vector reads most strongly: ``(id, label, score)``, highest and lowest first."""

    layer: int
    neuron: int
    kind: str  # "value" (through the unembedding) or "key" (against the embeddings)
    top: list[tuple[int, str, float]]
    bottom: list[tuple[int, str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists of ``{"id", "token", "score"}``."""

        def rows(items: list[tuple[int, str, float]]) -> list[dict[str, Any]]:
            return [{"id": i, "token": label, "score": score} for i, label, score in items]

        return {
            "layer": self.layer,
            "neuron": self.neuron,
            "kind": self.kind,
            "top": rows(self.top),
            "bottom": rows(self.bottom),
        }


def _through_norm(vector: Float[Tensor, " d"], norm: Any) -> Float[Tensor, " d"]:
    """How a norm's affine part sees a direction: centred (LayerNorm) and weighted.

    A norm divides by a per-position scale (positive, so rankings are unchanged and it is
    left out) and multiplies by its weight; LayerNorm first subtracts the mean, which
    removes a vector's mean component: ``(x - mean(x)) . u = x . (u - mean(u))``.
    """
    if isinstance(norm, LayerNorm):
        vector = vector - vector.mean()
    weight = getattr(norm, "weight", None)
    if weight is None:
        return vector
    return vector * (weight + getattr(norm, "weight_offset", 0.0))


def _ranked(
    scores: Float[Tensor, " vocab"], k: int, tokenizer: Any | None
) -> tuple[list[tuple[int, str, float]], list[tuple[int, str, float]]]:
    k = min(k, scores.numel())
    top = scores.topk(k)
    bottom = scores.topk(k, largest=False)

    def rows(values: Tensor, ids: Tensor) -> list[tuple[int, str, float]]:
        id_list = ids.tolist()
        labels = token_labels(tokenizer, id_list)
        return list(zip(id_list, labels, values.tolist(), strict=True))

    return rows(top.values, top.indices), rows(bottom.values, bottom.indices)


@torch.no_grad()
def neuron_value_tokens(
    model: Any,
    layer: int,
    neuron: int,
    k: int = 10,
    *,
    tokenizer: Any | None = None,
    through_norm: bool = True,
) -> NeuronTokens:
    """The tokens neuron (`layer`, `neuron`)'s value vector promotes and suppresses.

    Scores are ``value @ W_U``: the change in each logit per unit of activation if the
    value reached the unembedding unchanged. With `through_norm` (default) the value
    first goes through the final norm's affine part (centred for LayerNorm, times the
    norm weight; the per-position scale is a common positive factor and is left out),
    which is what the unembedding actually reads. Needs a model with an unembedding.
    """
    mlp = mlp_at(model, layer)
    layer = check_layer(model, layer)
    neuron = check_neuron(mlp, neuron, layer)
    value = mlp.W_out[neuron]
    if through_norm:
        value = _through_norm(value, model.ln_final)
    scale = model.unembed.scale if getattr(model, "unembed", None) is not None else 1.0
    scores = (value @ model.W_U).float().cpu() * scale
    top, bottom = _ranked(scores, k, tokenizer)
    return NeuronTokens(layer, neuron, "value", top, bottom)


@torch.no_grad()
def neuron_key_tokens(
    model: Any,
    layer: int,
    neuron: int,
    k: int = 10,
    *,
    tokenizer: Any | None = None,
    through_norm: bool = True,
    branch: str = "gate",
) -> NeuronTokens:
    """The tokens whose embeddings match neuron (`layer`, `neuron`)'s key best and worst.

    Scores are ``W_E @ key``: the neuron's pre-activation if the stream held only the
    token's embedding. A static proxy (earlier layers and positions also write to the
    stream), most meaningful in early layers. `through_norm` applies the MLP's input
    norm (pre-norm blocks) as `neuron_value_tokens` does the final one. A gated MLP has
    two keys: `branch` "gate" (default: the one through the non-linearity, which decides
    whether the neuron fires) or "linear" (``W_in``).
    """
    mlp = mlp_at(model, layer)
    layer = check_layer(model, layer)
    neuron = check_neuron(mlp, neuron, layer)
    if branch not in ("gate", "linear"):
        raise LmscopeError(f"branch {branch!r} is invalid: use 'gate' or 'linear'.")
    weights = mlp.W_gate if mlp.gated and branch == "gate" else mlp.W_in
    key = weights[:, neuron]
    block = model.blocks[layer]
    if through_norm and block.pre_norm:
        key = _through_norm(key, block.ln_mlp)
    scores = (model.W_E @ key).float().cpu()
    top, bottom = _ranked(scores, k, tokenizer)
    return NeuronTokens(layer, neuron, "key", top, bottom)


@torch.no_grad()
def neuron_contributions(
    source: Any,
    tokens: Tensor | None,
    layer: int,
    *,
    direction: Float[Tensor, " d_model"] | None = None,
) -> Tensor:
    """What each neuron of `layer` writes to the residual stream, at every position.

    `source` is an `ActivationCache` holding ``blocks.{layer}.mlp.hook_post`` (then
    `tokens` may be None) or a model (run on `tokens` up to `layer` only). Returns
    ``[batch, pos, d_mlp, d_model]`` (``a_i * v_i``; summed over neurons plus ``b_out``
    this is ``hook_mlp_out``), or with `direction` ``[batch, pos, d_mlp]``, each write's
    dot product with it: ``a_i * (v_i . direction)``, without materialising the writes
    (``d_model`` times less memory).
    """
    if isinstance(source, ActivationCache):
        model = source.model
        layer = check_layer(model, layer)
        post = source[post_hook(layer)]
    else:
        model = source
        layer = check_layer(model, layer)
        if tokens is None:
            raise LmscopeError("neuron_contributions of a model needs the tokens to run on.")
        ids = tokens if tokens.dim() == 2 else tokens[None]
        _, cache = model.run_with_cache(
            ids.to(model.device), names_filter=post_hook(layer), stop_at_layer=layer + 1
        )
        post = cache[post_hook(layer)]
    mlp = mlp_at(model, layer)
    if direction is None:
        return mlp.neuron_contributions(post)
    if direction.shape != (mlp.W_out.shape[1],):
        raise LmscopeError(
            f"direction must be a [d_model] = [{mlp.W_out.shape[1]}] vector, got shape "
            f"{list(direction.shape)}."
        )
    return post * (mlp.W_out @ direction.to(mlp.W_out))


# --- the key side, empirically: contexts where a neuron fires --------------------------
@dataclass(frozen=True)
class ActivatingContext:
    """A token where a neuron fired strongly, with the text around it.

    `sequence` counts the scanned sequences in order (across batches) and `position` is
    the token's index in it; `tokens` / `activations` cover the context window, in
    which the token is at `index`. `before` / `token` / `after` are the decoded text
    (token ids without a tokenizer), newlines shown as ⏎.
    """

    activation: float
    sequence: int
    position: int
    index: int
    tokens: list[int]
    activations: list[float]
    before: str
    token: str
    after: str

    @property
    def text(self) -> str:
        """The context as plain text."""
        return self.before + self.token + self.after

    @property
    def highlighted(self) -> str:
        """Plain text with the token marked: ``before[[token]]after``."""
        return f"{self.before}[[{self.token}]]{self.after}"

    @property
    def markup(self) -> str:
        """Rich markup with the token in reverse video."""
        from rich.markup import escape

        return f"{escape(self.before)}[bold reverse]{escape(self.token)}[/]{escape(self.after)}"

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus the highlighted text."""
        return {
            "activation": self.activation,
            "sequence": self.sequence,
            "position": self.position,
            "index": self.index,
            "tokens": self.tokens,
            "activations": self.activations,
            "text": self.text,
            "highlighted": self.highlighted,
        }


def _decode(tokenizer: Any | None, ids: list[int]) -> str:
    if not ids:
        return ""
    if tokenizer is None:
        return " ".join(map(str, ids))
    return tokenizer.decode(ids).replace("\n", "⏎")


def _context(
    tokenizer: Any | None,
    ids: Tensor,
    acts: Tensor,
    value: float,
    sequence: int,
    position: int,
    window: tuple[int, int],
) -> ActivatingContext:
    start = max(0, position - window[0])
    stop = min(ids.numel(), position + window[1] + 1)
    tokens = ids[start:stop].tolist()
    index = position - start
    sep = " " if tokenizer is None else ""  # ids are separated by spaces
    before = _decode(tokenizer, tokens[:index])
    after = _decode(tokenizer, tokens[index + 1 :])
    return ActivatingContext(
        activation=value,
        sequence=sequence,
        position=position,
        index=index,
        tokens=tokens,
        activations=acts[start:stop].tolist(),
        before=before + sep if before else before,
        token=_decode(tokenizer, [tokens[index]]),
        after=sep + after if after else after,
    )


@torch.no_grad()
def top_contexts_of_neurons(
    model: Any,
    tokenizer: Any | None,
    batches: Iterable[Tensor],
    layer: int,
    neurons: Sequence[int],
    k: int = 10,
    *,
    window: tuple[int, int] = (12, 4),
    progress: bool | None = None,
) -> dict[int, list[ActivatingContext]]:
    """`top_activating_contexts` for several neurons of one layer in one scan."""
    mlp = mlp_at(model, layer)
    layer = check_layer(model, layer)
    chosen = [check_neuron(mlp, n, layer) for n in neurons]
    if k < 1:
        raise LmscopeError(f"k must be >= 1, got {k}.")
    if len(window) != 2 or min(window) < 0:
        raise LmscopeError(f"window must be (tokens before, tokens after) >= 0, got {window}.")
    index = torch.tensor(chosen, device=model.device)
    # Per neuron, the k best so far as heap entries (value, -sequence, -position, context):
    # a min-heap whose root is the weakest, ties broken toward the earlier token, so the
    # result equals a stable sort of every activation.
    heaps: list[list[tuple[float, int, int, ActivatingContext]]] = [[] for _ in chosen]
    seen = 0
    batches = list(batches)  # token ids only (small); gives the progress bar its total
    with progress_bar(len(batches), "scanning activations", progress) as advance:
        for batch in batches:
            ids = batch if batch.dim() == 2 else batch[None]
            _, cache = model.run_with_cache(
                ids.to(model.device), names_filter=post_hook(layer), stop_at_layer=layer + 1
            )
            acts = cache[post_hook(layer)][..., index].float().cpu()  # [b, p, m]
            ids = ids.cpu()
            n_pos = acts.shape[1]
            flat = acts.permute(2, 0, 1).reshape(len(chosen), -1)  # [m, b*p]
            # Only a batch's own top k per neuron can enter the running top k.
            values, where = flat.sort(dim=-1, descending=True, stable=True)
            for j, heap in enumerate(heaps):
                for value, flat_index in zip(
                    values[j, :k].tolist(), where[j, :k].tolist(), strict=True
                ):
                    row, pos = divmod(flat_index, n_pos)
                    entry = (value, -(seen + row), -pos)
                    if len(heap) == k and entry <= heap[0][:3]:
                        break  # sorted: the rest of this batch is weaker still
                    ctx = _context(
                        tokenizer, ids[row], acts[row, :, j], value, seen + row, pos, window
                    )
                    item = (*entry, ctx)
                    if len(heap) < k:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heapreplace(heap, item)
            seen += ids.shape[0]
            advance(1)
    return {
        n: [item[3] for item in sorted(heap, key=lambda e: e[:3], reverse=True)]
        for n, heap in zip(chosen, heaps, strict=True)
    }


def top_activating_contexts(
    model: Any,
    tokenizer: Any | None,
    batches: Iterable[Tensor],
    layer: int,
    neuron: int,
    k: int = 10,
    *,
    window: tuple[int, int] = (12, 4),
    progress: bool | None = None,
) -> list[ActivatingContext]:
    """The `k` tokens of a corpus where neuron (`layer`, `neuron`) fires most, best first.

    `batches` are ``[batch, pos]`` token-id tensors (see `corpus_token_batches`); each
    runs up to `layer` only, and only the running top k (a heap per neuron) and their
    context windows (`window` = tokens before, after) are kept, so memory does not grow
    with the corpus. Ties go to the earlier token. `progress`: a bar on stderr (None:
    only on a terminal).
    """
    return top_contexts_of_neurons(
        model, tokenizer, batches, layer, [neuron], k, window=window, progress=progress
    )[check_neuron(mlp_at(model, layer), neuron, check_layer(model, layer))]
