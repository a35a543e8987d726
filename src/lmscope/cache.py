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
  so blocks ``n`` and later are never computed;
- on the CPU, freed memory stays in the process while the call runs and while the
  cache lives (`lmscope.allocator.hold_freed_memory`): the next call of a loop reuses
  the memory of the cache it replaces instead of asking the kernel for fresh pages,
  which cost more than the caching itself on virtual machines. Dropping every cache
  hands the memory back.

Hook names, their TransformerLens short forms and names filters are in
`lmscope.hook_names` (re-exported here).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.allocator import hold_freed_memory
from lmscope.decomposition import ResidualDecomposition
from lmscope.errors import LmscopeError, did_you_mean
from lmscope.hook_names import NamesFilter, get_act_name, select_hook_points
from lmscope.hooks import HookedModule, HookHandle, HookPoint


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
    keep_freed_memory: bool = True,
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
    end_hold = hold_freed_memory() if keep_freed_memory and _on_cpu(model, device) else None
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
    except BaseException:
        if end_hold is not None:
            end_hold()
        raise
    finally:
        for handle in handles:
            handle.remove()
    cache = ActivationCache(store, model)
    if end_hold is not None:
        # The hold ends with the cache. The finalizer empties the cache's dict first, so
        # its tensors are freed while memory is still kept and then handed back together.
        weakref.finalize(cache, _end_with_cache, cache.cache_dict, end_hold).atexit = False
    return out, cache.remove_batch_dim() if remove_batch_dim else cache


def _on_cpu(model: nn.Module, device: str | torch.device | None) -> bool:
    """Whether a cache of `model` on `device` (None: where the model is) is in CPU memory."""
    if device is not None:
        return torch.device(device).type == "cpu"
    param = next(model.parameters(), None)
    return param is None or param.device.type == "cpu"


def _end_with_cache(cache_dict: dict[str, Tensor], end_hold: Callable[[], None]) -> None:
    """Free a dying cache's tensors, then end the memory hold it kept open."""
    cache_dict.clear()
    end_hold()


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
