"""The geometric median: the point minimising the summed (unsquared) distances to a set.

Unlike the mean it is robust to outliers, which makes it a good starting value for an
SAE's decoder bias ``b_dec`` (Bricken et al. 2023): activation vectors have a few very
large-norm outliers (the BOS position...) that would drag a mean away from the bulk.

Computed with Weiszfeld's algorithm: each iteration is the mean of the points weighted
by the inverse of their distance to the current estimate. It converges to the unique
minimiser for points not all on a line; a distance floor avoids division by zero when
the estimate lands on a data point.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def geometric_median(
    points: Float[Tensor, "n d"],
    *,
    max_iter: int = 200,
    tol: float = 1e-7,
    eps: float = 1e-9,
) -> Float[Tensor, " d"]:
    """Weiszfeld's estimate of the geometric median of the rows of `points`.

    Runs in float64 and stops when an iteration moves the estimate by less than
    ``tol`` (relative to its norm, at least 1) or after `max_iter` iterations.
    """
    x = points.detach().double()
    median = x.mean(0)
    for _ in range(max_iter):
        weights = 1.0 / (x - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        moved = float((new - median).norm())
        median = new
        if moved <= tol * max(1.0, float(median.norm())):
            break
    return median.to(points.dtype)


def sum_of_distances(points: Float[Tensor, "n d"], center: Float[Tensor, " d"]) -> Tensor:
    """The objective the geometric median minimises: ``sum_i |points_i - center|``."""
    return (points.double() - center.double()).norm(dim=1).sum()
