"""How one lmscope tensor is made from Hugging Face tensors, and back.

A family's weight mapping is a list of `Rule`s. Each rule names one tensor of the
lmscope state dict (``target``), the checkpoint tensors it is made of (``sources``),
and two inverse functions: ``join`` (checkpoint -> lmscope, used by loading) and
``split`` (lmscope -> checkpoint, used by export). Writing both next to each other keeps
the two directions consistent, and the tests round-trip every rule.

``split`` also gives the shapes a checkpoint must have: applied to a meta tensor of the
target's shape it returns meta tensors of the sources' shapes, so a checkpoint is
checked against the config before a byte of it is read.

``rows`` marks the rules whose target is just the sources' bytes one after another
(`same`, and `stacked` along dim 0): the loader reads those straight from the file into
the target's memory, with no temporary (see `loader`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Join = Callable[[list[Tensor]], Tensor]
Split = Callable[[Tensor], list[Tensor]]


@dataclass(frozen=True)
class Rule:
    """One lmscope tensor (``target``) from Hugging Face tensors (``sources``) and back."""

    target: str
    sources: tuple[str, ...]
    join: Join
    split: Split
    #: The target is the sources' rows in order (their bytes, concatenated): no math.
    rows: bool = False

    def expected_shapes(self, target_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Shapes the sources must have for a target of `target_shape`."""
        meta = torch.empty(tuple(target_shape), device="meta")
        return [tuple(t.shape) for t in self.split(meta)]


def same(target: str, source: str) -> Rule:
    """The tensor under another name."""
    return Rule(target, (source,), lambda ts: ts[0], lambda t: [t], rows=True)


def transposed(target: str, source: str) -> Rule:
    """GPT-2's ``Conv1D`` stores ``[in, out]``; ``nn.Linear`` wants ``[out, in]``."""
    return Rule(target, (source,), lambda ts: ts[0].t(), lambda t: [t.t()])


def stacked(target: str, sources: Sequence[str], sizes: Sequence[int], dim: int = 0) -> Rule:
    """Several tensors concatenated along `dim` (fused q/k/v rows, gate and up rows)."""
    sizes = list(sizes)
    return Rule(
        target,
        tuple(sources),
        lambda ts: torch.cat(ts, dim=dim),
        lambda t: list(t.split(sizes, dim=dim)),
        rows=dim == 0,
    )


def per_head_interleaved(target: str, source: str, n_heads: int, d_head: int) -> Rule:
    """GPT-NeoX's fused projection: rows grouped per head as ``[q_h; k_h; v_h]``.

    lmscope's fused rows are ``[all q; all k; all v]``, so the rows are regrouped:
    ``[head, 3, d_head, ...] <-> [3, head, d_head, ...]``. Works for weights and biases.
    """

    def join(ts: list[Tensor]) -> Tensor:
        t = ts[0]
        rest = t.shape[1:]
        return t.reshape(n_heads, 3, d_head, *rest).transpose(0, 1).reshape(-1, *rest)

    def split(t: Tensor) -> list[Tensor]:
        rest = t.shape[1:]
        return [t.reshape(3, n_heads, d_head, *rest).transpose(0, 1).reshape(-1, *rest)]

    return Rule(target, (source,), join, split)
