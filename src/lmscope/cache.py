"""Running with a cache: every activation you ask for, by name, after one forward pass.

``logits, cache = model.run_with_cache(tokens)`` runs the model once with a small
caching hook on the chosen hook points and returns an `ActivationCache`, a read-only
mapping from hook name to tensor. Lookups follow TransformerLens, so its code carries
over: ``cache["blocks.3.attn.hook_pattern"]``, ``cache["pattern", 3]``,
``cache["resid_post", -1]``, ``cache["scale", 2, "ln1"]``, ``cache["scale"]`` (the final
norm's). The residual-stream decompositions (`decompose_resid`, `accumulated_resid`,
`stack_head_results` ...) come from `lmscope.decomposition`.

What a run costs follows what it asks for:
- only the selected hook points get a hook, and only their tensors are kept, without
  copies. A view into a larger buffer (``hook_q`` is a slice of the fused QKV output)
  that is cached without the rest of it is copied after the pass, so that it does not
  keep the whole buffer alive (`_compact`);
- without ``with_grad`` the run is under ``torch.no_grad()``: no autograd graph is built
  or kept, as TransformerLens's cache stores detached tensors;
- ``stop_at_layer=n`` raises out of the forward pass when block ``n`` is about to run,
  so blocks ``n`` and later are never computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.decomposition import ResidualDecomposition
from lmscope.errors import LmscopeError, did_you_mean
from lmscope.hooks import HookedModule, HookError, HookHandle, HookPoint

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


class CacheKeyError(LmscopeError, KeyError):
    """A cache lookup of a name that is not in the cache."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class ActivationCache(ResidualDecomposition, Mapping[str, Tensor]):
    """Cached activations of one forward pass: hook name -> tensor, with the model.

    A read-only mapping (``keys()``, ``items()``, ``len``, ``in``) whose lookups also
    accept TransformerLens's short forms (see `get_act_name`; negative layers count from
    the end). Gradients cached with ``bwd`` are under ``name + "_grad"``. `has_batch_dim`
    is False after `remove_batch_dim`.
    """

    def __init__(
        self, cache_dict: dict[str, Tensor], model: nn.Module, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # --- lookups ------------------------------------------------------------------------
    def resolve(self, key: object) -> str:
        """The full hook name that `key` stands for (the name itself when it is one)."""
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
            raise CacheKeyError(
                f"cache key {key!r} is invalid: use a hook name or a tuple "
                "(name, layer[, sublayer]) such as ('pattern', 3) or ('scale', 2, 'ln1')."
            )
        if len(key) > 3:
            raise CacheKeyError(f"cache key {key!r} has {len(key)} parts; at most 3 are allowed.")
        name, layer, sub = (*key, None, None)[:3]
        if isinstance(layer, int) and layer < 0:
            layer += self._n_layers()
        return get_act_name(name, layer, sub)

    def __getitem__(self, key: object) -> Tensor:
        name = self.resolve(key)
        if name in self.cache_dict:
            return self.cache_dict[name]
        raise CacheKeyError(self._missing(key, name))

    def __contains__(self, key: object) -> bool:
        try:
            return self.resolve(key) in self.cache_dict
        except LmscopeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __repr__(self) -> str:
        size = sum(t.numel() * t.element_size() for t in self.cache_dict.values())
        return f"ActivationCache({len(self)} tensors, {size / 2**20:.1f} MiB)"

    def nbytes(self) -> int:
        """Bytes held by the cached tensors (a tensor sharing another's storage counted once)."""
        seen: dict[int, int] = {}
        for t in self.cache_dict.values():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return sum(seen.values())

    def _n_layers(self) -> int:
        cfg = getattr(self.model, "cfg", None)
        return int(cfg.n_layers) if cfg is not None else 0

    def _missing(self, key: object, name: str) -> str:
        """Why `name` is not here: not a hook of the model, or a hook that was not cached."""
        hooks = self.model.hook_names() if isinstance(self.model, HookedModule) else []
        if name in hooks or name.removesuffix("_grad") in hooks:
            what = "its gradient was" if name.endswith("_grad") else "it was"
            return (
                f"{name!r} (from key {key!r}) is a hook of this model but {what} not cached: "
                "add it to run_with_cache's names_filter (or stop_at_layer stopped before it). "
                f"The cache holds {len(self)} names."
            )
        hint = did_you_mean(name, list(self.cache_dict) + hooks)
        return f"no activation named {name!r} (from key {key!r}) in this cache. {hint}".strip()

    # --- whole-cache operations ---------------------------------------------------------
    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every cached tensor to `device` (in place); returns the cache."""
        self.cache_dict = {name: t.to(device) for name, t in self.cache_dict.items()}
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension of a batch-1 cache (in place); returns the cache.

        Mixture-of-experts hooks inside an expert (``...experts.{e}.hook_*``) hold the
        tokens routed to that expert, not a batch: they are left as they are.
        """
        if not self.has_batch_dim:
            raise LmscopeError("this cache has no batch dimension (already removed).")
        batched = [name for name in self.cache_dict if ".experts." not in name]
        sizes = {self.cache_dict[n].shape[0] for n in batched if self.cache_dict[n].ndim > 0}
        if sizes - {1}:
            raise LmscopeError(
                "remove_batch_dim needs a batch of 1; this cache holds batch sizes "
                f"{sorted(sizes)}."
            )
        for name in batched:
            self.cache_dict[name] = self.cache_dict[name][0]
        self.has_batch_dim = False
        return self


class _StopForward(Exception):  # noqa: N818 (control flow, not an error)
    """Raised from a pre-hook to leave the forward pass early with the residual stream."""

    def __init__(self, resid: Tensor) -> None:
        super().__init__()
        self.resid = resid


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


def _keep(x: Tensor, keep_graph: bool, device: str | torch.device | None) -> Tensor:
    """What the cache stores for activation (or gradient) `x`: no copy unless moved."""
    if not keep_graph and x.requires_grad:
        x = x.detach()
    return x if device is None else x.to(device)


def _partial(tensors: list[Tensor]) -> bool:
    """Whether views of one buffer cover much less than it (so keeping them wastes it)."""
    covered = sum(t.numel() * t.element_size() for t in tensors)
    return tensors[0].untyped_storage().nbytes() > 1.25 * covered


def _compact(store: dict[str, Tensor]) -> None:
    """Copy cached views that would keep a much larger buffer alive (in place).

    ``hook_q``, ``hook_k`` and ``hook_v`` are slices of one fused QKV output, the two
    halves of a gated MLP's input are slices of one matmul: cached together they are the
    whole buffer and stay views (no copy, which is what keeps caching everything cheap);
    cached alone, each gets its own copy here, so the cache holds what was asked. Done
    after the forward pass, when it is known which slices of a buffer were kept.
    """
    by_storage: dict[int, list[str]] = {}
    for name, t in store.items():
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for names in by_storage.values():
        if _partial([store[n] for n in names]):
            for n in names:
                store[n] = store[n].clone()


def run_with_cache(
    model: HookedModule,
    *args: Any,
    names_filter: NamesFilter = None,
    device: str | torch.device | None = None,
    stop_at_layer: int | None = None,
    with_grad: bool = False,
    bwd: bool | Callable[[Any], Tensor] = False,
    remove_batch_dim: bool = False,
    **kwargs: Any,
) -> tuple[Any, ActivationCache]:
    """Run `model` once and cache the activations `names_filter` selects.

    See `HookedModule.run_with_cache` for the arguments. Returns ``(output, cache)``; with
    `stop_at_layer` the output is the residual stream entering that block.
    """
    points = select_hook_points(model, names_filter)
    store: dict[str, Tensor] = {}
    keep_graph = with_grad or bool(bwd)

    def save(x: Tensor, hook: HookPoint) -> None:
        store[hook.name] = _keep(x, keep_graph, device)

    def save_grad(grad: Tensor, hook: HookPoint) -> None:
        # Gradients arrive after the cache is returned: each is checked on its own.
        grad = _keep(grad, False, device)
        store[hook.name + "_grad"] = grad.clone() if _partial([grad]) else grad

    handles: list[HookHandle | torch.utils.hooks.RemovableHandle] = []
    try:
        for point in points:
            handles.append(point.add_hook(save, "fwd"))
            if bwd:
                handles.append(point.add_hook(save_grad, "bwd"))
        if stop_at_layer is not None:
            handles.append(_stop_before(model, stop_at_layer))
        with torch.enable_grad() if keep_graph else torch.no_grad():
            try:
                out = model(*args, **kwargs)
            except _StopForward as stop:
                out = stop.resid
            if not keep_graph:  # a copy would not be on the graph: grads w.r.t. it fail
                _compact(store)
            if callable(bwd):
                _backward(bwd(out))
    finally:
        for handle in handles:
            handle.remove()
    cache = ActivationCache(store, model)
    return out, cache.remove_batch_dim() if remove_batch_dim else cache


def _stop_before(model: nn.Module, stop_at_layer: int) -> torch.utils.hooks.RemovableHandle:
    """A pre-hook that leaves the forward pass with the input of block `stop_at_layer`.

    ``stop_at_layer == n_layers`` stops before the final norm: the output is the residual
    stream after the last block. Negative values count from the end, as in TransformerLens.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "ln_final"):
        raise LmscopeError(
            f"stop_at_layer needs a decoder-only or encoder-only model; "
            f"{type(model).__name__} has no single stack of blocks."
        )
    n = len(blocks)
    if isinstance(stop_at_layer, bool) or not -n <= stop_at_layer <= n:
        raise LmscopeError(
            f"stop_at_layer={stop_at_layer!r} is invalid: use a block index in [-{n}, {n}] "
            f"(this model has {n} blocks; {n} stops before the final norm)."
        )
    layer = n + stop_at_layer if stop_at_layer < 0 else stop_at_layer
    target = blocks[layer] if layer < n else model.ln_final

    def stop(_module: nn.Module, args: tuple[Any, ...]) -> None:
        raise _StopForward(args[0])

    return target.register_forward_pre_hook(stop)


def _backward(loss: Any) -> None:
    """Backward from the scalar a `bwd` callable returned, with a clear error otherwise."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise LmscopeError(
            "bwd, when a function, must map the model output to a scalar tensor (a loss); "
            f"it returned {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}." if isinstance(loss, Tensor) else ".")
        )
    if not loss.requires_grad:
        raise LmscopeError(
            "bwd's loss does not require grad: the model's parameters are frozen "
            "(requires_grad=False) or the loss does not depend on the output."
        )
    loss.backward()


__all__ = [
    "ActivationCache",
    "CacheKeyError",
    "NamesFilter",
    "get_act_name",
    "run_with_cache",
    "select_hook_points",
]
