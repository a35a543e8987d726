"""Hook points: named places in the forward pass where activations can be read or changed.

Every activation of an lmscope model passes through a `HookPoint`, an identity module
whose name is its module path (``blocks.3.attn.hook_pattern``), following
TransformerLens so that code and papers carry over. A hook is a function
``fn(activation, hook) -> activation | None``: returning a tensor replaces the
activation, returning ``None`` leaves it as it was.

With nothing attached a hook point is a single list check, so models pay next to
nothing for having them. Modules ask ``hook_point.active`` to decide whether to compute
optional activations at all (attention scores, per-head results).

Temporary hooks come through `HookedModule.hooks(...)`, a context manager that removes
exactly the hooks it added, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from lmscope.errors import LmscopeError, did_you_mean

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
#: A hook point's name, or a predicate over names (``lambda name: name.endswith("hook_z")``).
HookTarget = str | Callable[[str], bool]
Direction = Literal["fwd", "bwd"]


class HookError(LmscopeError, KeyError):
    """A hook name that does not exist, or a hook used the wrong way."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class HookHandle:
    """Removes one hook from its hook point; usable as a context manager."""

    def __init__(self, point: HookPoint, fn: HookFn, direction: Direction) -> None:
        self.point = point
        self.fn = fn
        self.direction = direction

    def remove(self) -> None:
        """Detach the hook (a no-op when it is already gone)."""
        hooks = self.point._fwd if self.direction == "fwd" else self.point._bwd
        for i, existing in enumerate(hooks):
            if existing is self.fn:
                del hooks[i]
                return

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class HookPoint(nn.Module):
    """Identity on an activation; attached hooks may read or replace it."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self._fwd: list[HookFn] = []
        self._bwd: list[HookFn] = []

    @property
    def active(self) -> bool:
        """Whether any hook is attached (modules skip optional work when not)."""
        return bool(self._fwd) or bool(self._bwd)

    def add_hook(self, fn: HookFn, direction: Direction = "fwd") -> HookHandle:
        """Attach `fn`; `direction='bwd'` hooks receive the gradient of the activation."""
        if direction not in ("fwd", "bwd"):
            raise HookError(f"hook direction {direction!r} is invalid: use 'fwd' or 'bwd'.")
        (self._fwd if direction == "fwd" else self._bwd).append(fn)
        return HookHandle(self, fn, direction)

    def remove_hooks(self) -> None:
        """Detach every hook of this point."""
        self._fwd.clear()
        self._bwd.clear()

    def forward(self, x: Tensor) -> Tensor:
        """Run the forward hooks in order, then arrange the backward ones."""
        for fn in tuple(self._fwd):
            out = fn(x, self)
            if out is not None:
                x = _checked(out, fn, self.name)
        if self._bwd and x.requires_grad:
            # The backward hooks of *this* forward, so they still fire when the caller
            # runs backward after a temporary-hooks block has ended.
            hooks = tuple(self._bwd)
            x.register_hook(lambda grad: self._run_backward(grad, hooks))
        return x

    # Bypass nn.Module.__call__ (global hooks, tracing checks): this runs on every
    # activation of every forward, and with no hooks attached it must cost ~nothing.
    def __call__(self, x: Tensor) -> Tensor:
        if not self._fwd and not self._bwd:
            return x
        return self.forward(x)

    def _run_backward(self, grad: Tensor, hooks: tuple[HookFn, ...]) -> Tensor:
        for fn in hooks:
            out = fn(grad, self)
            if out is not None:
                grad = _checked(out, fn, self.name)
        return grad

    def extra_repr(self) -> str:
        return self.name


def _checked(out: object, fn: HookFn, name: str) -> Tensor:
    """A hook's replacement value, refused clearly when it is not a tensor."""
    if not isinstance(out, Tensor):
        raise HookError(
            f"hook {getattr(fn, '__name__', fn)!r} on {name!r} returned a "
            f"{type(out).__name__}; a hook must return a tensor (the new activation) or None."
        )
    return out


class HookedModule(nn.Module):
    """Base of lmscope models: finds hook points by name and manages hooks on them."""

    def setup_hooks(self) -> None:
        """Name every hook point after its module path. Call at the end of ``__init__``."""
        points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                points[name] = module
        self._hook_points = points

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point, by name, in forward order."""
        return self._hook_points

    def hook_names(self) -> list[str]:
        """Names of every hook point, in forward order."""
        return list(self._hook_points)

    def resolve_hooks(self, target: HookTarget) -> list[HookPoint]:
        """The hook points that `target` (a name or a predicate on names) selects."""
        if callable(target):
            return [p for name, p in self._hook_points.items() if target(name)]
        if target not in self._hook_points:
            raise HookError(
                f"no hook point named {target!r}; see model.hook_names() for the "
                f"{len(self._hook_points)} names. {did_you_mean(target, self._hook_points)}"
            )
        return [self._hook_points[target]]

    def add_hook(
        self, target: HookTarget, fn: HookFn, direction: Direction = "fwd"
    ) -> list[HookHandle]:
        """Attach `fn` to every hook point `target` selects; returns their handles."""
        return [p.add_hook(fn, direction) for p in self.resolve_hooks(target)]

    def reset_hooks(self) -> None:
        """Detach every hook from every hook point."""
        for point in self._hook_points.values():
            point.remove_hooks()

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[HookTarget, HookFn]] = (),
        bwd_hooks: Sequence[tuple[HookTarget, HookFn]] = (),
    ) -> Iterator[HookedModule]:
        """Attach hooks for the duration of a ``with`` block; always removes exactly them."""
        handles: list[HookHandle] = []
        try:
            for target, fn in fwd_hooks:
                handles += self.add_hook(target, fn, "fwd")
            for target, fn in bwd_hooks:
                handles += self.add_hook(target, fn, "bwd")
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[HookTarget, HookFn]] = (),
        bwd_hooks: Sequence[tuple[HookTarget, HookFn]] = (),
        **kwargs: Any,
    ) -> Any:
        """Call the model with temporary hooks (removed on return, also on exceptions).

        Backward hooks belong to this forward pass: they fire when the caller later runs
        ``.backward()`` on the result, and not for later forwards.
        """
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self,
        *args: Any,
        names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
        device: str | torch.device | None = None,
        stop_at_layer: int | None = None,
        with_grad: bool = False,
        bwd: bool | Callable[[Any], Tensor] = False,
        remove_batch_dim: bool = False,
        keep_freed_memory: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Call the model and cache activations: ``logits, cache = model.run_with_cache(tokens)``.

        - `names_filter`: which hook points to cache: None (every one except the opt-in
          ``hook_result``), a name, a list of names, or a predicate on names. Only these
          are kept, so memory follows what is asked.
        - `device`: where cached tensors go (e.g. "cpu" for a GPU model).
        - `stop_at_layer`: run blocks ``[0, n)`` only (negative: from the end) and return
          the residual stream entering block n instead of logits; later blocks never run.
        - `with_grad`: build the autograd graph and keep it in the cached tensors (default:
          run under ``torch.no_grad()``, nothing to backpropagate, nothing extra kept).
        - `bwd`: also cache the gradients of the chosen activations, as ``name + "_grad"``
          (implies `with_grad`). True: they arrive when you call ``.backward()`` on
          something computed from the output; a function ``output -> scalar loss``: that
          backward is run here.
        - `remove_batch_dim`: drop the batch dimension of a batch-1 run.
        - `keep_freed_memory`: for a cache on the CPU, keep freed memory in the process
          while the call runs and the returned cache lives
          (`lmscope.allocator.hold_freed_memory`), so that the next call reuses the
          memory of the cache it replaces instead of faulting in fresh pages (caching
          everything on GPT-2 small at 8 x 256 is 1.9 GB a call); dropping every cache
          hands the memory back. False: the C library's defaults.

        Other arguments go to the model's forward. Hooks are removed on return, also when
        the forward raises. See `lmscope.cache.ActivationCache` for lookups and the
        residual-stream decompositions.
        """
        from lmscope.cache import run_with_cache  # the cache machinery lives there

        return run_with_cache(
            self,
            *args,
            names_filter=names_filter,
            device=device,
            stop_at_layer=stop_at_layer,
            with_grad=with_grad,
            bwd=bwd,
            remove_batch_dim=remove_batch_dim,
            keep_freed_memory=keep_freed_memory,
            **kwargs,
        )
