"""Attribution patching: every patch of a grid at once, by a first-order approximation.

Exact patching costs one forward pass per cell. Attribution patching (Nanda, 2023,
"Attribution Patching: Activation Patching At Industrial Scale"; Syed, Rager & Conmy,
2023, "Attribution Patching Outperforms Automated Circuit Discovery") replaces each
patched run by the metric's linearisation around the unpatched run:

    m(patched) ~= m(run) + sum over the site's entries of (source_act - run_act) * dm/d(run_act)

With ``direction="denoise"`` the run is the corrupted input and the source the clean one,
so one forward + backward pass on the corrupted input (plus a cached clean run) gives
the whole grid, for every layer and activation kind at once. The values are normalised
as exact patching's (0 = corrupted, 1 = clean) and come in the same `PatchingResult`
grids: ``[layer, position]`` for the residual stream and attention / MLP outputs,
``[layer, head]`` or ``[layer, head, position]`` for ``z``, ``q``, ``k``, ``v`` and
``pattern``.

How good the approximation is depends on how linear the model is between the two
activations: exact for a model that is linear in the patched activation (attention-only,
no norms, fixed attention patterns), good for small changes, poor where a patch saturates
a softmax or a norm (early residual stream of real models, big token swaps). Measure it:
`compare_with_exact` runs both and reports the error (max absolute, mean absolute,
Pearson correlation over cells). The metric must be differentiable (the logit
difference is); no parameter gradients are computed or touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.metrics import Metric, evaluate, normalized_metric
from lmscope.interpret.patching import activation_patch
from lmscope.interpret.patching_result import PatchingResult, position_labels
from lmscope.interpret.sites import (
    HEAD_ACTIVATIONS,
    check_direction,
    check_layers,
    check_pair,
    grid_by_position,
    hook_name,
    layout_of,
)


def _reduce(product: Tensor, activation: str, by_position: bool) -> Tensor:
    """Sum a ``[batch, ...]`` product over every axis but the grid's (head, position)."""
    layout = layout_of(activation)
    keep = [
        a for a in (layout.head_axis, layout.pos_axis if by_position else None) if a is not None
    ]
    summed = product.sum(dim=[a for a in range(product.dim()) if a not in keep])
    # Summing keeps the remaining axes in their order; the grid wants head before position.
    if len(keep) == 2 and keep[0] > keep[1]:
        summed = summed.T
    return summed


def attribution_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    activation: str = "resid_pre",
    by_position: bool | None = None,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
    normalize: bool = True,
    tokenizer: Any | None = None,
) -> PatchingResult:
    """The first-order estimate of `activation_patch` with the same arguments.

    `by_position` defaults to True for whole-layer activations (``[layer, position]``)
    and False for per-head ones (``[layer, head]``). One forward and backward pass on
    the run input, one cached forward pass on the source.
    """
    layout_of(activation)
    direction = check_direction(direction)
    per_head = activation in HEAD_ACTIVATIONS
    by_position = grid_by_position(activation, by_position)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, tokenizer)
    rows = check_layers(model, layers)
    names = [hook_name(model, activation, layer) for layer in rows]
    run, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)

    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=names)
    # Our own hooks rather than a cached run: the gradient must be taken with respect to
    # the very tensors the forward pass went on to use (the cache may store copies).
    saved: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: HookPoint) -> None:
        saved[hook.name] = act

    def leaf(x: Tensor, hook: HookPoint) -> Tensor:
        # Start the graph at the embeddings: activations need grad even when the weights
        # are frozen, and no gradient flows into (or accumulates on) the parameters.
        return x.detach().requires_grad_(True)

    hooks = [(name, keep) for name in names]
    if "hook_embed" in model.hook_points():
        hooks.insert(0, ("hook_embed", leaf))
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        run_logits = model(run)
        value = evaluate(metric, run_logits)
        if not value.requires_grad:
            raise LmscopeError(
                "the metric does not depend on the logits through autograd; attribution "
                "patching needs a differentiable metric (e.g. logit_diff_metric)."
            )
        grads = torch.autograd.grad(value, [saved[name] for name in names], allow_unused=True)

    run_value = float(value.detach())
    source_value = float(evaluate(metric, source_logits))
    clean_value, corrupted_value = (
        (source_value, run_value) if direction == "denoise" else (run_value, source_value)
    )
    cells = []
    for name, grad in zip(names, grads, strict=True):
        delta = source_cache[name].to(saved[name].dtype) - saved[name].detach()
        product = delta * grad if grad is not None else torch.zeros_like(delta)
        cells.append(_reduce(product.float(), activation, by_position))
    estimate = run_value + torch.stack(cells).cpu()
    if normalize:  # the same scale as exact patching (and its check that it exists)
        scale = normalized_metric(metric, clean_value, corrupted_value)
        estimate = (estimate - scale.corrupted_value) / (scale.clean_value - scale.corrupted_value)
    values = estimate
    return PatchingResult(
        values=values,
        axes=("layer", *(["head"] if per_head else []), *(["position"] if by_position else [])),
        activation=activation,
        method="attribution",
        direction=direction,
        normalized=normalize,
        clean_metric=clean_value,
        corrupted_metric=corrupted_value,
        layers=rows,
        labels=position_labels(clean, corrupted, tokenizer),
    )


@dataclass
class AttributionComparison:
    """Attribution patching next to exact patching on the same grid, with the error."""

    attribution: PatchingResult
    exact: PatchingResult
    max_abs_error: float
    mean_abs_error: float
    correlation: float  # Pearson over cells; NaN when either grid is constant

    def to_dict(self) -> dict[str, Any]:
        """Both grids and the error measures, JSON-ready."""
        corr = self.correlation
        return {
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "correlation": None if corr != corr else corr,
            "attribution": self.attribution.to_dict(),
            "exact": self.exact.to_dict(),
        }


def compare_with_exact(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    activation: str = "resid_pre",
    by_position: bool | None = None,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
    normalize: bool = True,
    batch_size: int = 16,
    progress: bool | None = None,
    tokenizer: Any | None = None,
) -> AttributionComparison:
    """Run attribution and exact patching on the same grid and report the approximation
    error (in the grid's units: normalised metric unless ``normalize=False``)."""
    shared = dict(
        activation=activation,
        by_position=by_position,
        layers=layers,
        direction=direction,
        normalize=normalize,
        tokenizer=tokenizer,
    )
    approx = attribution_patch(model, clean_tokens, corrupted_tokens, metric, **shared)
    exact = activation_patch(
        model,
        clean_tokens,
        corrupted_tokens,
        metric,
        batch_size=batch_size,
        progress=progress,
        **shared,
    )
    a, e = approx.values.flatten().double(), exact.values.flatten().double()
    error = (a - e).abs()
    correlation = (
        float(torch.corrcoef(torch.stack([a, e]))[0, 1]) if a.numel() > 1 else float("nan")
    )
    return AttributionComparison(
        attribution=approx,
        exact=exact,
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        correlation=correlation,
    )
