"""Direct logit attribution: how much each component writes the target's logit directly.

The final residual stream is a sum of what the components wrote (embeddings, each
head, each MLP or each MLP neuron, output biases: `ActivationCache.decompose_resid`
and friends). The logit is not linear in the stream because of the final norm, but it
is linear once the norm's scale is frozen at its value on this very input
(`apply_ln_to_stack`, TransformerLens's convention), so each component gets

    attr(c) = centre(c)[pos] / sigma[pos] . d,    d = s * w * (W_U[:, target] - W_U[:, baseline])

(`lmscope.interpret.readout.logit_direction`: ``w`` the final norm's weight, ``s`` the
unembedding scale; without a baseline the logit itself). This is exactly
TransformerLens's ``cache.logit_attrs`` on a model whose norm weight is folded into
``W_U`` (``fold_ln``).

The sum identity is exact. LayerNorm's centring is linear (the mean of a sum is the sum
of the means), so the centred components sum to the centred stream, and with the cached
scale ``sigma``: ``ln_final(x) . u = sum_c centre(c) / sigma . (w * u) + b . u``. RMSNorm
has no centring and no bias. The only part of the logit that no component writes is the
constant ``s * b . (W_U[:, t] - W_U[:, b]) + b_U[t] - b_U[b]`` (the final norm's bias
read out, plus the unembedding bias), reported as the component ``final_bias``. So

    sum of every attribution, final_bias included == the model's logit (difference)

to float rounding, whatever the granularity.

Granularities (labels as TransformerLens's decompositions):
- ``"components"``: ``embed``, ``pos_embed``, ``{l}_attn_out``, ``{l}_mlp_out``
  (each sublayer output includes its bias);
- ``"heads"``: every head ``L{l}H{h}``, ``{l}_mlp_out``, the embeddings, and ``bias``
  (the attention output biases, which belong to no head);
- ``"neurons"``: every neuron ``L{l}N{n}`` of MLP `layer` (all layers when None) and its
  ``{l}_mlp_bias``, the other components as in ``"components"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.interpret.indices import check_layer, mlp_at
from lmscope.interpret.readout import check_readout_model, logit_constant, logit_direction
from lmscope.interpret.tokens import (
    Prompt,
    TokenSpec,
    prompt_ids,
    single_token_id,
    token_label,
    token_labels,
)

Granularity = Literal["components", "heads", "neurons"]
GRANULARITIES = ("components", "heads", "neurons")


def _kind(label: str) -> str:
    """What a component label names: embed, attn, head, mlp, neuron or bias."""
    if label in ("embed", "pos_embed"):
        return "embed"
    if label.endswith("_attn_out"):
        return "attn"
    if label.endswith("_mlp_out"):
        return "mlp"
    if label.startswith("L") and "H" in label:
        return "head"
    if label.startswith("L") and "N" in label:
        return "neuron"
    return "bias"


@dataclass
class AttributionResult:
    """Each component's direct contribution to a logit (difference) at one position.

    `values` sum to `logit`, the model's own logit (difference), to float rounding.
    """

    labels: list[str]
    values: Float[Tensor, " component"]
    logit: float
    target_id: int
    target_token: str
    baseline_id: int | None
    baseline_token: str | None
    position: int  # absolute position in the prompt
    input_ids: list[int]
    input_tokens: list[str]
    granularity: str
    layer: int | None  # the MLP layer of a "neurons" attribution (None: every layer)
    n_layers: int
    n_heads: int

    @property
    def kinds(self) -> list[str]:
        """Each component's kind: embed, attn, head, mlp, neuron or bias."""
        return [_kind(label) for label in self.labels]

    @property
    def total(self) -> float:
        """Sum of all attributions (equals `logit`)."""
        return float(self.values.sum())

    def top(
        self, n: int = 10, kind: str | None = None, by: Literal["value", "abs"] = "value"
    ) -> list[tuple[str, float]]:
        """The `n` largest attributions (optionally of one `kind`), largest first; by
        signed value (what pushes towards the target) or by magnitude."""
        if by not in ("value", "abs"):
            raise LmscopeError(f"by={by!r} is invalid: use 'value' or 'abs'.")
        kinds = self.kinds
        if kind is not None and kind not in set(kinds):
            raise LmscopeError(
                f"kind={kind!r} does not occur here; this attribution has {sorted(set(kinds))}."
            )
        rows = [
            (label, float(v))
            for label, v, k in zip(self.labels, self.values, kinds, strict=True)
            if kind is None or k == kind
        ]
        rows.sort(key=lambda row: abs(row[1]) if by == "abs" else row[1], reverse=True)
        return rows[:n]

    def ranked(self) -> list[tuple[str, float]]:
        """Every component, largest attribution first."""
        return self.top(len(self.labels))

    def head_matrix(self) -> Float[Tensor, "layer head"]:
        """Head attributions as a ``[n_layers, n_heads]`` grid (granularity "heads")."""
        if self.granularity != "heads":
            raise LmscopeError("head_matrix needs an attribution with granularity='heads'.")
        index = {label: i for i, label in enumerate(self.labels)}
        grid = torch.zeros(self.n_layers, self.n_heads)
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                grid[layer, head] = self.values[index[f"L{layer}H{head}"]]
        return grid

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON, components ranked largest first."""
        return {
            "target": {"id": self.target_id, "token": self.target_token},
            "baseline": None
            if self.baseline_id is None
            else {"id": self.baseline_id, "token": self.baseline_token},
            "position": self.position,
            "input_ids": self.input_ids,
            "input_tokens": self.input_tokens,
            "granularity": self.granularity,
            "layer": self.layer,
            "logit": self.logit,
            "total": self.total,
            "components": [
                {"label": label, "kind": _kind(label), "value": value}
                for label, value in self.ranked()
            ],
        }

    def plot(self, path: str | Path, *, top: int = 20, title: str | None = None) -> Path:
        """Bar chart of the `top` largest |attributions| (and a layers x heads heatmap for
        head attributions); see `lmscope.interpret.attribution_plot.plot_attribution`."""
        from lmscope.interpret.attribution_plot import plot_attribution

        return plot_attribution(self, path, top=top, title=title)


def _names(granularity: str, has_scale: bool) -> Any:
    """The hook names each granularity's decomposition reads (keeps the cache small)."""
    suffixes = ["hook_embed", "hook_pos_embed", "hook_attn_out", "hook_mlp_out"]
    if granularity == "heads":
        suffixes.append("attn.hook_z")
    if granularity == "neurons":
        suffixes.append("mlp.hook_post")
    if has_scale:
        suffixes.append("ln_final.hook_scale")
    return lambda name: name.endswith(tuple(suffixes))


def _stack(
    cache: Any, model: Any, granularity: str, layer: int | None, pos: int
) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """Components that sum to the final residual stream at `pos`, with their labels."""
    if granularity == "heads":
        return cache.get_full_resid_decomposition(
            expand_neurons=False, pos_slice=pos, return_labels=True
        )
    stack, labels = cache.decompose_resid(pos_slice=pos, return_labels=True)
    if granularity == "components":
        return stack, labels
    layers = range(model.cfg.n_layers) if layer is None else [layer]
    neurons, neuron_labels = cache.stack_neuron_results(
        max(layers) + 1, pos_slice=pos, return_labels=True
    )
    d_mlp = model.cfg.mlp_dim
    # The MLP outputs being split are replaced by their neurons and output bias.
    keep = [i for i, label in enumerate(labels) if _mlp_layer(label) not in layers]
    parts, out_labels = [stack[keep]], [labels[i] for i in keep]
    for i in layers:
        parts.append(neurons[i * d_mlp : (i + 1) * d_mlp])
        out_labels += neuron_labels[i * d_mlp : (i + 1) * d_mlp]
        bias = model.blocks[i].mlp.fc_out.bias
        if bias is not None:
            parts.append(bias.detach().to(stack).expand_as(stack[0])[None])
            out_labels.append(f"{i}_mlp_bias")
    return torch.cat(parts), out_labels


def _mlp_layer(label: str) -> int | None:
    return int(label.split("_")[0]) if label.endswith("_mlp_out") else None


def direct_logit_attribution(
    model: Any,
    tokens: Prompt,
    *,
    target: TokenSpec,
    baseline: TokenSpec | None = None,
    position: int = -1,
    granularity: Granularity = "components",
    layer: int | None = None,
    tokenizer: Any | None = None,
) -> AttributionResult:
    """Attribute the logit of `target` (minus `baseline`'s) at `position` to every
    component (see the module doc for the formula and the exact sum identity).

    `tokens`: one prompt (text with `tokenizer`, ids, or ``[1, pos]``); `target` /
    `baseline`: token ids or single-token text. `granularity` "neurons" splits MLP
    `layer` (every MLP when None) into its neurons.
    """
    check_readout_model(model, "direct logit attribution")
    if granularity not in GRANULARITIES:
        raise LmscopeError(
            f"granularity={granularity!r} is invalid: use one of {', '.join(GRANULARITIES)}."
        )
    if layer is not None and granularity != "neurons":
        raise LmscopeError(
            "layer= picks the MLP whose neurons to split: use granularity='neurons'."
        )
    if granularity == "neurons":
        layer = None if layer is None else check_layer(model, layer)
        for i in range(model.cfg.n_layers) if layer is None else [layer]:
            mlp_at(model, i)  # a clear error for attention-only and MoE blocks
    ids = prompt_ids(model, tokens, tokenizer)
    n_pos = ids.shape[1]
    if not -n_pos <= position < n_pos:
        raise LmscopeError(f"position {position} does not exist: the prompt has 0..{n_pos - 1}.")
    position %= n_pos
    vocab = model.cfg.vocab_size
    target_id = single_token_id(target, tokenizer, vocab, "target")
    baseline_id = (
        None if baseline is None else single_token_id(baseline, tokenizer, vocab, "baseline")
    )
    if baseline_id == target_id:
        raise LmscopeError("the baseline is the target token: their logit difference is always 0.")

    has_scale = "ln_final.hook_scale" in model.hook_names()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=_names(granularity, has_scale))
        stack, labels = _stack(cache, model, granularity, layer, position)
        scaled = cache.apply_ln_to_stack(stack, pos_slice=position)  # [component, 1, d_model]
        direction = logit_direction(model, target_id, baseline_id).to(scaled)
        values = (scaled[:, 0] @ direction).float()
        constant = logit_constant(model, target_id, baseline_id)
        row = logits[0, position].float()
        logit = float(row[target_id] - (row[baseline_id] if baseline_id is not None else 0.0))
    return AttributionResult(
        labels=[*labels, "final_bias"],
        values=torch.cat([values.cpu(), torch.tensor([constant])]),
        logit=logit,
        target_id=target_id,
        target_token=token_label(tokenizer, target_id),
        baseline_id=baseline_id,
        baseline_token=None if baseline_id is None else token_label(tokenizer, baseline_id),
        position=position,
        input_ids=ids[0].tolist(),
        input_tokens=token_labels(tokenizer, ids[0].tolist()),
        granularity=granularity,
        layer=layer,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
    )
