"""Patching metrics: functions from logits to one number, and their normalisation.

A metric maps the logits of a run, ``[batch, pos, vocab]``, to a scalar tensor (average
over the batch yourself). Patching evaluates it once per patched copy of the input, on
logits of the same shape as the unpatched run, so any metric written for one run works.
Metrics used for attribution patching must be differentiable (the logit difference is).

`logit_diff_metric` is the standard choice (Wang et al., 2022; Meng et al., 2022 use the
probability instead): the logit of the answer minus the logit of the corrupted answer,
which cancels what both share and is linear in the final residual stream.
`normalized_metric` rescales any metric so that the corrupted run scores 0 and the clean
run 1, which is how the patching functions report their grids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError

#: logits ``[batch, pos, vocab]`` -> a scalar tensor.
Metric = Callable[[Tensor], Tensor]
#: One token id for the whole batch, or one per sequence.
TokenIds = int | Sequence[int] | Tensor


def _ids(ids: TokenIds, batch: int, device: torch.device, what: str) -> Tensor:
    """`ids` as a ``[batch]`` long tensor (a single id is shared by the batch)."""
    t = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise LmscopeError(
            f"{what} holds {t.numel()} token ids for a batch of {batch}: give one id, or "
            "one per sequence."
        )
    return t


@dataclass(frozen=True)
class LogitDiff:
    """``logit[correct] - logit[incorrect]`` at `position`, averaged over the batch."""

    correct: TokenIds
    incorrect: TokenIds
    position: int = -1

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        """The mean logit difference: a scalar tensor (differentiable)."""
        at = logits[:, self.position]  # [batch, vocab]
        rows = torch.arange(at.shape[0], device=at.device)
        good = _ids(self.correct, at.shape[0], at.device, "correct")
        bad = _ids(self.incorrect, at.shape[0], at.device, "incorrect")
        return (at[rows, good] - at[rows, bad]).mean()


def logit_diff_metric(
    correct_id: TokenIds, incorrect_id: TokenIds, position: int = -1
) -> LogitDiff:
    """A metric: logit of `correct_id` minus logit of `incorrect_id` at `position`.

    Ids are one per batch or one per sequence (IOI-style datasets with different names).
    """
    return LogitDiff(correct_id, incorrect_id, position)


@dataclass(frozen=True)
class NormalizedMetric:
    """``(metric - corrupted) / (clean - corrupted)``: 0 on the corrupted run, 1 on the clean."""

    metric: Metric
    clean_value: float
    corrupted_value: float

    def __post_init__(self) -> None:
        gap = self.clean_value - self.corrupted_value
        if not abs(gap) > 1e-8 * max(1.0, abs(self.clean_value)):
            raise LmscopeError(
                f"cannot normalise: the metric is {self.clean_value:.6g} on the clean run and "
                f"{self.corrupted_value:.6g} on the corrupted one, so the corruption changes "
                "nothing it measures. Pick inputs or a metric that differ (or normalize=False)."
            )

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        """The normalised value of the wrapped metric."""
        value = self.metric(logits)
        return (value - self.corrupted_value) / (self.clean_value - self.corrupted_value)


def normalized_metric(
    metric: Metric, clean_value: float, corrupted_value: float
) -> NormalizedMetric:
    """Wrap `metric` so that `corrupted_value` maps to 0 and `clean_value` to 1."""
    return NormalizedMetric(metric, float(clean_value), float(corrupted_value))


def evaluate(metric: Metric, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
    """`metric(logits)`, checked to be one number (a 0-d tensor)."""
    value = metric(logits)
    if isinstance(value, int | float):
        return torch.tensor(float(value))
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise LmscopeError(
            f"a metric must map logits [batch, pos, vocab] to one number (average over the "
            f"batch); it returned {shape}."
        )
    return value.reshape(())
