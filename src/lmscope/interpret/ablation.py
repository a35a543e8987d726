"""Ablations: knock out an activation or a head and see what the model does without it.

Three ways to remove what a component carries (Wang et al., 2022, and Chan et al., 2022
on causal scrubbing, discuss why zero is the crudest):

- ``zero``: replace it by zeros. Simple, but zero may be far from any value the model
  ever sees, so downstream components can react to the ablation itself.
- ``mean``: replace it by its mean over a reference dataset (`reference_tokens`, or the
  input itself): removes what varies between inputs, keeps the constant part. The mean
  is over every reference sequence and position (one vector), or, with
  ``per_position=True``, over sequences separately for each position (the IOI paper's
  choice for templated prompts; the reference must be at least as long as the input).
- ``resample``: replace it, for each input sequence, by its value on a reference
  sequence drawn at random (a ``torch.Generator`` seeded with `seed`, with replacement;
  one draw per sequence, shared by all targets of the call so that they stay
  consistent), position by position: keeps the activation on-distribution.

Targets are hook names (the whole activation) or ``(layer, head)`` pairs (that head's
``hook_z``, its output before ``W_O``; zeroing it is the same as zeroing its ``W_O``).
Attention patterns and scores (``[b, head, q, k]``) are averaged over sequences only.

Per-position means and resampling line positions up from 0, so they assume the whole
sequence runs at once (not token-by-token decoding with a KV cache); zero and the
all-position mean work anywhere, including during `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookFn, HookPoint
from lmscope.interpret.indices import check_layer
from lmscope.interpret.sites import LAYOUTS, Site, as_tokens, check_choice, check_head_of, site_mask

AblationMethod = Literal["zero", "mean", "resample"]
#: A hook name (the whole activation) or a ``(layer, head)`` pair (that head's ``z``).
AblationTarget = str | tuple[int, int]
#: Hooks whose tensors are ``[batch, head, q, k]``: both trailing axes are positions.
_PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")


def _group_targets(
    model: Any, targets: AblationTarget | Sequence[AblationTarget]
) -> dict[str, list[int] | None]:
    """Hook name -> heads to ablate (None: the whole activation), targets checked."""
    if isinstance(targets, str) or (
        isinstance(targets, tuple)
        and len(targets) == 2
        and all(isinstance(t, int) for t in targets)
    ):
        targets = [targets]  # type: ignore[list-item]
    if not targets:
        raise LmscopeError("no ablation targets: give hook names or (layer, head) pairs.")
    groups: dict[str, list[int] | None] = {}
    for target in targets:
        if isinstance(target, str):
            model.resolve_hooks(target)  # a clear error (with a did-you-mean) if unknown
            groups[target] = None
            continue
        if not (
            isinstance(target, tuple)
            and len(target) == 2
            and all(isinstance(t, int) and not isinstance(t, bool) for t in target)
        ):
            raise LmscopeError(
                f"ablation target {target!r} is invalid: use a hook name or a (layer, head) pair."
            )
        layer = check_layer(model, target[0])
        head = check_head_of(model, "z", target[1])
        name = f"blocks.{layer}.attn.hook_z"
        if name in groups and groups[name] is None:
            continue  # the whole activation is ablated already
        groups[name] = sorted({*(groups.get(name) or []), head})
    return groups


def _position_axes(name: str) -> tuple[int, ...]:
    """The position axes of a hook's tensor: 1 (``[b, p, ...]``), or 2 and 3 for patterns."""
    return (2, 3) if name.endswith(_PATTERN_HOOKS) else (1,)


def _leading(values: Tensor, act: Tensor, name: str) -> Tensor:
    """`values` cut to `act`'s number of positions along the position axes."""
    for axis in _position_axes(name):
        n = act.shape[axis]
        if values.shape[axis] < n:
            raise LmscopeError(
                f"the reference activations of {name!r} have {values.shape[axis]} positions, "
                f"fewer than the {n} ablated: give reference sequences at least as long."
            )
        values = values.narrow(axis, 0, n)
    return values


def _reference_value(reference: Tensor, name: str, per_position: bool) -> Tensor:
    """The mean activation of `reference` (``[n_ref, ...]``), keeping broadcast axes."""
    if per_position or name.endswith(_PATTERN_HOOKS):
        return reference.mean(dim=0, keepdim=True)
    return reference.mean(dim=(0, 1), keepdim=True)


def ablation_hooks(
    model: Any,
    targets: AblationTarget | Sequence[AblationTarget],
    *,
    method: str = "zero",
    reference_tokens: Any | None = None,
    per_position: bool = False,
    seed: int = 0,
) -> list[tuple[str, HookFn]]:
    """Forward hooks that ablate `targets` (use with ``model.hooks(fwd_hooks=...)``).

    ``mean`` and ``resample`` need `reference_tokens` (``[n_ref, pos_ref]`` ids, run once
    here to collect the reference activations). See the module docstring.
    """
    method = check_choice(method, get_args(AblationMethod), "ablation method")
    groups = _group_targets(model, targets)
    references: dict[str, Tensor] = {}
    if method != "zero":
        if reference_tokens is None:
            raise LmscopeError(
                f"{method} ablation needs reference_tokens (the dataset to take "
                f"{'means' if method == 'mean' else 'activations'} from)."
            )
        ref = as_tokens(model, reference_tokens, "reference_tokens")
        if method == "resample" and ref.shape[0] < 2:
            raise LmscopeError(
                "resample ablation needs at least 2 reference sequences to draw from."
            )
        _, cache = model.run_with_cache(ref, names_filter=list(groups))
        references = {
            name: cache[name]
            if method == "resample"
            else _reference_value(cache[name], name, per_position)
            for name in groups
        }

    def ablate_hook(act: Tensor, hook: HookPoint) -> Tensor:
        name = hook.name
        if method == "zero":
            values = torch.zeros_like(act)
        elif method == "mean":
            values = references[name]
            if per_position or name.endswith(_PATTERN_HOOKS):
                values = _leading(values, act, name)
        else:  # resample: each sequence takes a randomly drawn reference sequence
            generator = torch.Generator().manual_seed(seed)
            pool = references[name]
            drawn = torch.randint(pool.shape[0], (act.shape[0],), generator=generator)
            values = _leading(pool[drawn.to(pool.device)], act, name)
        values = values.to(device=act.device, dtype=act.dtype)
        try:
            torch.broadcast_shapes(values.shape, act.shape)
        except RuntimeError:
            raise LmscopeError(
                f"cannot ablate {name!r}: its reference values have shape "
                f"{list(values.shape)}, the activation {list(act.shape)}."
            ) from None
        heads = groups[name]
        if heads is None:
            return values.expand_as(act).clone()
        sites = [[Site(name, LAYOUTS["z"], head=h) for h in heads]]
        return torch.where(site_mask(sites, name, act.shape[1:], act.device)[0], values, act)

    return [(name, ablate_hook) for name in groups]


def ablate(
    model: Any,
    tokens: Any,
    targets: AblationTarget | Sequence[AblationTarget],
    *,
    method: str = "zero",
    reference_tokens: Any | None = None,
    per_position: bool = False,
    seed: int = 0,
    tokenizer: Any | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of `tokens` with `targets` ablated by `method` (no autograd graph).

    Mean ablation without `reference_tokens` averages over `tokens` themselves; resample
    ablation without them draws from the other sequences of `tokens`. See the module
    docstring for targets, methods and `per_position`.
    """
    ids = as_tokens(model, tokens, "tokens", tokenizer)
    if reference_tokens is None and method in ("mean", "resample"):
        reference_tokens = ids
    with torch.no_grad():
        hooks = ablation_hooks(
            model,
            targets,
            method=method,
            reference_tokens=reference_tokens,
            per_position=per_position,
            seed=seed,
        )
        return model.run_with_hooks(ids, fwd_hooks=hooks)
