"""Hook names: TransformerLens's short forms (`get_act_name`) and names filters.

``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``; `select_hook_points`
turns a ``names_filter`` (None, a name, a list of names, a predicate) into the model's
hook points, as `run_with_cache` and the analyses use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from lmscope.hooks import HookedModule, HookError, HookPoint

#: What `run_with_cache` accepts as `names_filter`.
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None

# TransformerLens's aliases (`utils.get_act_name`), onto lmscope's (identical) leaf names.
_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_SUBLAYER_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_NORM_NAMES = {"scale", "normalized"}
#: Hooks that a default (``names_filter=None``) cache leaves out: per-head results are
#: not part of the normal forward pass (attention computes them only when hooked, and
#: ``n_heads`` times larger than the attention output), as TransformerLens leaves them
#: out unless ``use_attn_result`` is set. Ask for them by name or predicate.
_OPT_IN = ("hook_result",)


def get_act_name(name: str, layer: int | str | None = None, sub: str | None = None) -> str:
    """The full hook name for a TransformerLens-style short name.

    ``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``,
    ``get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"``,
    ``get_act_name("scale", 2, "ln1") == "blocks.2.ln1.hook_scale"``,
    ``get_act_name("scale") == "ln_final.hook_scale"``, ``get_act_name("k6")`` (name and
    layer run together) ``== "blocks.6.attn.hook_k"``. Full names are returned as they
    are. Aliases: attn -> pattern, attn_logits -> attn_scores, key/query/value -> k/q/v,
    mlp_pre/mlp_post -> pre/post. Negative layers are resolved by `ActivationCache`,
    which knows the model's depth.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and sub is None:
        return name
    run_together = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)
    if run_together is not None and layer is None:
        name, layer_text, sub_text = run_together.groups()
        layer, sub = int(layer_text), sub_text or sub
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        sub = "attn"
    elif name in _MLP_NAMES:
        sub = "mlp"
    elif sub is not None:
        sub = _SUBLAYER_ALIASES.get(sub, sub)
    full = f"blocks.{layer}." if layer is not None else ""
    if sub:
        full += f"{sub}."
    full += f"hook_{name}"
    if name in _NORM_NAMES and layer is None:
        full = f"ln_final.{full}"
    return full


def select_hook_points(model: HookedModule, names_filter: NamesFilter) -> list[HookPoint]:
    """The hook points `names_filter` selects (None: all but the opt-in `hook_result`)."""
    points = model.hook_points()
    if names_filter is None:
        # Scores/pattern cannot be hooked when the model is pinned to fused SDPA.
        sdpa_only = getattr(getattr(model, "cfg", None), "attn_impl", None) == "sdpa"
        skip = (*_OPT_IN, "hook_attn_scores", "hook_pattern") if sdpa_only else _OPT_IN
        return [p for name, p in points.items() if not name.endswith(skip)]
    if isinstance(names_filter, str):
        return model.resolve_hooks(names_filter)
    if callable(names_filter):
        chosen = [p for name, p in points.items() if names_filter(name)]
        if not chosen:
            raise HookError(
                "names_filter selected none of this model's hook points; see "
                "model.hook_names() for the names."
            )
        return chosen
    if isinstance(names_filter, Sequence):
        for name in names_filter:
            if not isinstance(name, str):
                raise HookError(f"names_filter holds {name!r}; list hook names as strings.")
        wanted = set(names_filter)
        unknown = wanted - points.keys()
        if unknown:
            model.resolve_hooks(sorted(unknown)[0])  # raises with a did-you-mean
        return [p for name, p in points.items() if name in wanted]
    raise HookError(
        f"names_filter {names_filter!r} is invalid: use None (all), a hook name, a list of "
        "names, or a predicate on names."
    )


__all__ = ["NamesFilter", "get_act_name", "select_hook_points"]
