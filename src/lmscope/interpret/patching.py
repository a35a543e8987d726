"""Activation patching: which activations carry the difference between two inputs.

Run the model on one input, replace one activation with its value from another input,
and measure how far a metric moves (Meng et al., 2022, "causal tracing"; Wang et al.,
2022; Heimersheim & Nanda, 2024, "How to use and interpret activation patching").
The inputs are a *clean* prompt ("The Eiffel Tower is in the city of") and a
*corrupted* one that differs in what matters ("The Colosseum is in the city of"); they
must have the same number of tokens so that positions line up.

Conventions (those of TransformerLens's ``patching`` module and Neel Nanda's tutorials):

- ``direction="denoise"`` (default): run on the **corrupted** input and patch in **clean**
  activations. A site whose clean value restores the clean behaviour is *sufficient*.
- ``direction="noise"``: run on the **clean** input and patch in **corrupted**
  activations. A site whose corruption breaks the behaviour is *necessary*.
- With ``normalize=True`` (default) each value is ``(m - m_corrupted) / (m_clean -
  m_corrupted)``: **0 = the corrupted run's metric, 1 = the clean run's**, in both
  directions (denoising starts from 0, noising from 1; `PatchingResult.effect` gives the
  change with a common sign).

Grids: `patch_residual` (``resid_pre`` / ``resid_mid`` / ``resid_post``), `patch_attn_out`
and `patch_mlp_out` give ``[layer, position]``; `patch_heads` patches each head's ``z``
(its output before ``W_O``), ``q``, ``k``, ``v`` or ``pattern`` and gives ``[layer, head]``,
or ``[layer, head, position]`` with ``by_position=True`` (the query position for
``pattern``). A position patch replaces that position in every sequence of the batch.

Cost: one forward pass per cell, batched: `batch_size` patched copies of the input run
in one pass, each with its own patch, so a small model's whole grid takes a few passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.metrics import Metric, evaluate, normalized_metric
from lmscope.interpret.patching_result import PatchingResult, position_labels
from lmscope.interpret.sites import (
    HEAD_ACTIVATIONS,
    Site,
    check_choice,
    check_direction,
    check_layers,
    check_pair,
    grid_by_position,
    hook_name,
    layout_of,
    n_heads_of,
    site_mask,
)


def run_patched(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    source: Mapping[str, Tensor],
    copies: Sequence[Sequence[Site]],
) -> Float[Tensor, "copies_batch pos vocab"]:
    """Run `tokens` once per entry of `copies`, copy ``k`` patched at its sites.

    `source` maps each hook used by a site to replacement values: ``[batch, ...]`` (the
    same for every copy, e.g. another input's cached activation) or ``[copies * batch,
    ...]`` (one per copy). Returns the logits of all copies stacked, ``[copies * batch,
    pos, vocab]`` (copy ``k`` is rows ``k * batch : (k + 1) * batch``).
    """
    batch, n = tokens.shape[0], len(copies)
    hooks = sorted({site.hook for sites in copies for site in sites})
    missing = [h for h in hooks if h not in source]
    if missing:
        raise LmscopeError(f"no source values for hook {missing[0]!r}: add it to `source`.")
    for name in hooks:
        if source[name].shape[0] not in (batch, n * batch):
            raise LmscopeError(
                f"source values of {name!r} have batch {source[name].shape[0]}: give "
                f"{batch} (shared by every copy) or {n * batch} (copies x batch)."
            )

    def patch(act: Tensor, hook: HookPoint) -> Tensor:
        values = source[hook.name].to(act.dtype)
        values = (
            values.unsqueeze(0) if values.shape[0] == batch else values.unflatten(0, (n, batch))
        )
        mask = site_mask(copies, hook.name, act.shape[1:], act.device)
        return torch.where(mask, values, act.unflatten(0, (n, batch))).flatten(0, 1)

    with model.hooks(fwd_hooks=[(name, patch) for name in hooks]):
        return model(tokens.repeat(n, 1))


@contextmanager
def progress_bar(
    total: int, description: str, enabled: bool | None
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. ``enabled=None``: only on a
    terminal (so logs and tests stay clean)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    show = console.is_terminal if enabled is None else enabled
    columns = (description, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not show) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def measure_copies(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    source: Mapping[str, Tensor],
    copies: Sequence[Sequence[Site]],
    metric: Metric,
    *,
    batch_size: int = 16,
    progress: bool | None = None,
    description: str = "patching",
) -> Float[Tensor, " copies"]:
    """`metric` after each copy's patches (see `run_patched`), `batch_size` copies a pass."""
    if isinstance(batch_size, bool) or batch_size < 1:
        raise LmscopeError(f"batch_size must be a positive number of copies, got {batch_size!r}.")
    batch = tokens.shape[0]
    values: list[Tensor] = []
    with progress_bar(len(copies), description, progress) as advance:
        for start in range(0, len(copies), batch_size):
            chunk = copies[start : start + batch_size]
            logits = run_patched(model, tokens, source, chunk)
            for k in range(len(chunk)):
                values.append(evaluate(metric, logits[k * batch : (k + 1) * batch]).float())
            advance(len(chunk))
    return torch.stack(values).cpu()


def activation_patch(
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
) -> PatchingResult:
    """Patch `activation` at every layer (x position, x head) and measure `metric`.

    - `clean_tokens`, `corrupted_tokens`: text (with `tokenizer`), ids, ``[pos]`` or
      ``[batch, pos]``, of the same shape.
    - `metric`: logits ``[batch, pos, vocab]`` -> scalar (e.g. `logit_diff_metric`).
    - `activation`: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``,
      ``mlp_out`` (grid ``[layer, position]``, or ``[layer]`` patching all positions at
      once with ``by_position=False``) or a per-head ``z``, ``q``, ``k``, ``v``,
      ``pattern`` (grid ``[layer, head]``, ``[layer, head, position]`` with
      ``by_position=True``). `by_position` defaults to these grids' first form.
    - `direction`, `normalize`: see the module docstring (0 = corrupted, 1 = clean).
    - `layers`: patch only these layers (rows of the grid); default all.
    - `batch_size`: patched copies per forward pass; `progress`: rich bar (None: on a
      terminal); `tokenizer`: also labels the positions for plots.
    """
    layout_of(activation)  # a clear error for unknown names before any work
    direction = check_direction(direction)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, tokenizer)
    rows = check_layers(model, layers)
    names = [hook_name(model, activation, layer) for layer in rows]
    run, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        source_logits, cache = model.run_with_cache(source_tokens, names_filter=names)
        run_logits = model(run)
        clean_logits, corrupted_logits = (
            (source_logits, run_logits) if direction == "denoise" else (run_logits, source_logits)
        )
        clean_value = float(evaluate(metric, clean_logits))
        corrupted_value = float(evaluate(metric, corrupted_logits))
        measure = normalized_metric(metric, clean_value, corrupted_value) if normalize else metric
        by_position = grid_by_position(activation, by_position)
        sites, axes, shape = grid_sites(model, activation, rows, names, run.shape[1], by_position)
        values = measure_copies(
            model,
            run,
            {name: cache[name] for name in names},
            [[site] for site in sites],
            measure,
            batch_size=batch_size,
            progress=progress,
            description=f"patching {activation}",
        )
    return PatchingResult(
        values=values.reshape(shape),
        axes=axes,
        activation=activation,
        method="exact",
        direction=direction,
        normalized=normalize,
        clean_metric=clean_value,
        corrupted_metric=corrupted_value,
        layers=rows,
        labels=position_labels(clean, corrupted, tokenizer),
    )


def grid_sites(
    model: Any,
    activation: str,
    layers: Sequence[int],
    names: Sequence[str],
    n_pos: int,
    by_position: bool,
) -> tuple[list[Site], tuple[str, ...], tuple[int, ...]]:
    """The sites of a patching grid in row-major order, with its axes and shape."""
    layout = layout_of(activation)
    positions: list[int | None] = list(range(n_pos)) if by_position else [None]
    if activation in HEAD_ACTIVATIONS:
        heads: list[int | None] = list(range(n_heads_of(model, activation)))
        axes: tuple[str, ...] = ("layer", "head", "position") if by_position else ("layer", "head")
    else:
        heads = [None]
        axes = ("layer", "position") if by_position else ("layer",)
    sites = [Site(name, layout, head, pos) for name in names for head in heads for pos in positions]
    shape = (
        len(layers),
        *([len(heads)] if heads != [None] else []),
        *([n_pos] if by_position else []),
    )
    return sites, axes, shape


def patch_residual(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    hook: str = "resid_pre",
    **options: Any,
) -> PatchingResult:
    """Patch the residual stream (`hook`: ``resid_pre``, ``resid_mid`` or ``resid_post``)
    at each layer and position: a ``[layer, position]`` grid. Denoising by default (run
    corrupted, patch clean; 0 = corrupted, 1 = clean). `options`: see `activation_patch`."""
    check_choice(hook, ("resid_pre", "resid_mid", "resid_post"), "hook")
    return activation_patch(
        model, clean_tokens, corrupted_tokens, metric, activation=hook, **options
    )


def patch_attn_out(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Metric, **options: Any
) -> PatchingResult:
    """Patch each layer's attention output at each position: ``[layer, position]``.
    `options`: see `activation_patch`."""
    return activation_patch(
        model, clean_tokens, corrupted_tokens, metric, activation="attn_out", **options
    )


def patch_mlp_out(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Metric, **options: Any
) -> PatchingResult:
    """Patch each layer's MLP output at each position: ``[layer, position]``.
    `options`: see `activation_patch`."""
    return activation_patch(
        model, clean_tokens, corrupted_tokens, metric, activation="mlp_out", **options
    )


def patch_heads(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    activation: str = "z",
    by_position: bool = False,
    **options: Any,
) -> PatchingResult:
    """Patch each head's `activation` (``z`` = its output before ``W_O``, ``q``, ``k``,
    ``v``, ``pattern``) at all positions (``[layer, head]``) or one position at a time
    (``by_position=True``: ``[layer, head, position]``). Under GQA, ``k``/``v`` index
    key/value heads. `options`: see `activation_patch`."""
    check_choice(activation, HEAD_ACTIVATIONS, "per-head activation")
    return activation_patch(
        model,
        clean_tokens,
        corrupted_tokens,
        metric,
        activation=activation,
        by_position=by_position,
        **options,
    )
