"""The data `lmscope explain` shows: labelled arrays, steps, discrepancies, checks.

Everything here is plain dataclasses of Python numbers, so ``dataclasses.asdict`` gives
the ``--json`` output directly and rendering (`lmscope.explain.render`) stays apart
from computation. Also the two small tools every worked example uses: recording what
hook points see, and building modules without touching the global random state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint

#: A number, a vector or a matrix, as nested Python floats (JSON as is).
Values = int | float | list[float] | list[list[float]]
M = TypeVar("M", bound=nn.Module)


@dataclass
class Array:
    """A labelled scalar, vector or matrix computed by a module (or from its hooks)."""

    name: str
    values: Values
    #: Labels of the rows of a matrix (tokens, neurons...); None for scalars and vectors.
    rows: list[str] | None = None
    #: Labels of the columns (of a matrix, or the entries of a vector).
    cols: list[str] | None = None


@dataclass
class Step:
    """One step of a worked example: what happens, and the numbers it produces."""

    label: str
    explanation: str
    arrays: list[Array] = field(default_factory=list)


@dataclass
class Discrepancy:
    """A figure of the source document that differs from what the modules compute."""

    what: str
    document_value: Any
    true_value: Any
    note: str


@dataclass
class Check:
    """An identity verified on the computed numbers (e.g. parts sum to the whole)."""

    what: str
    passed: bool
    #: Largest absolute difference for numeric checks; None for yes/no checks.
    max_error: float | None = None


@dataclass
class Example:
    """A worked example from the source documents, recomputed by lmscope's modules."""

    id: str
    title: str
    source: str
    #: Which real lmscope modules computed the numbers, and how they were set up.
    modules: str
    steps: list[Step] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def array(self, name: str) -> Array:
        """The array called `name` in any step (raises `LmscopeError` if none)."""
        for step in self.steps:
            for arr in step.arrays:
                if arr.name == name:
                    return arr
        names = [a.name for s in self.steps for a in s.arrays]
        raise LmscopeError(f"example {self.id} has no array {name!r}; it has {names}.")


def values(t: Tensor) -> Values:
    """A tensor as nested Python floats (float64 digits of the stored value)."""
    return t.detach().to(torch.float64).cpu().tolist()


def check(what: str, got: Tensor, want: Tensor, tol: float = 1e-5) -> Check:
    """`Check` that `got` equals `want` to `tol` (0 asks for bit-equality)."""
    err = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
    ok = torch.equal(got, want) if tol == 0 else err <= tol
    return Check(what, bool(ok), err)


@contextmanager
def recording(points: Mapping[str, HookPoint]) -> Iterator[dict[str, Tensor]]:
    """Record a copy of what each hook point sees while the ``with`` body runs.

    Hooks are removed on exit, also when the body raises (a leaked hook would keep
    recording into a dead dict on every later forward).
    """
    seen: dict[str, Tensor] = {}

    def recorder(name: str) -> Callable[[Tensor, HookPoint], None]:
        def fn(x: Tensor, hook: HookPoint) -> None:
            seen[name] = x.detach().clone()

        return fn

    with ExitStack() as stack:
        for name, point in points.items():
            stack.enter_context(point.add_hook(recorder(name)))
        yield seen


def quietly(factory: Callable[[], M], seed: int | None = None) -> M:
    """Build a module without disturbing the caller's random state.

    ``nn.Linear`` draws its initial weights from the global generator; explaining an
    example must not change what the user's next ``torch.randn`` returns.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return factory()


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero (examples then set only what they use)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module
