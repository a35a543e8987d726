"""Quality and sparsity measures of an SAE: L0, MSE, FVU, dead / dense latents, density.

Shared by the trainer (logged every few steps) and the evaluation module, so a number
means the same thing wherever it is printed.

- L0: mean number of nonzero latents per input.
- MSE: mean squared error per element of the reconstruction.
- FVU (fraction of variance unexplained): summed squared error over the summed squared
  deviation of the target from its batch mean, ``1 - explained variance``. 0 is a
  perfect reconstruction; 1 is no better than predicting the batch mean.
- Feature density: the fraction of inputs on which each latent fires. A latent is
  *dead* when it has not fired for a given number of inputs, *dense* when it fires on
  more than a given fraction of them.
- `at_l0`: a measure at a given L0, read off a sweep (e.g. ReLU-L1's coefficients),
  to compare variants at matched sparsity.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def l0(acts: Float[Tensor, "*batch d_sae"]) -> Tensor:
    """Mean number of nonzero latents per input (a 0-dim float tensor)."""
    return (acts != 0).sum(-1).float().mean()


def mse(reconstruction: Float[Tensor, "*batch d"], target: Float[Tensor, "*batch d"]) -> Tensor:
    """Mean squared error per element."""
    return (reconstruction.float() - target.float()).pow(2).mean()


def fvu(reconstruction: Float[Tensor, "*batch d"], target: Float[Tensor, "*batch d"]) -> Tensor:
    """Fraction of variance unexplained, against the mean of the batch (rows of `target`)."""
    target = target.float().reshape(-1, target.shape[-1])
    error = (reconstruction.float().reshape(target.shape) - target).pow(2).sum()
    variance = (target - target.mean(0)).pow(2).sum()
    return error / variance.clamp_min(torch.finfo(torch.float32).tiny)


def explained_variance(
    reconstruction: Float[Tensor, "*batch d"], target: Float[Tensor, "*batch d"]
) -> Tensor:
    """``1 - fvu``: the fraction of the target's variance the reconstruction explains."""
    return 1 - fvu(reconstruction, target)


def at_l0(points: Iterable[tuple[float, float]], l0: float, rel_tol: float = 0.05) -> float | None:
    """The value of a sweep's ``(L0, value)`` curve at `l0`: linear in log L0 between the two
    points around it (sparsity sweeps are roughly geometric in L0). A point within
    `rel_tol` of `l0` counts as a match (a one-point sweep can still be read at its own
    L0); outside the curve, None: extrapolating a sweep would invent a measurement."""
    pts = sorted((float(a), float(v)) for a, v in points if a > 0)
    for a, value in pts:
        if math.isclose(a, l0, rel_tol=rel_tol):
            return value
    for (a, fa), (b, fb) in itertools.pairwise(pts):
        if a < l0 < b:
            t = math.log(l0 / a) / math.log(b / a)
            return fa + t * (fb - fa)
    return None


def firing_counts(acts: Float[Tensor, "*batch d_sae"]) -> Tensor:
    """How many inputs each latent fired on (int64 ``[d_sae]``)."""
    return (acts != 0).reshape(-1, acts.shape[-1]).sum(0)


def feature_density(counts: Tensor, n_inputs: int) -> Tensor:
    """Fraction of inputs each latent fired on, from `firing_counts` over `n_inputs`."""
    return counts.double() / max(n_inputs, 1)


def dead_fraction(density: Tensor, below: float = 0.0) -> float:
    """Fraction of latents whose density is <= `below` (0: never fired)."""
    return float((density <= below).float().mean())


def dense_fraction(density: Tensor, above: float = 0.1) -> float:
    """Fraction of latents that fire on more than `above` of the inputs."""
    return float((density > above).float().mean())


class FiringTracker:
    """Per-latent firing statistics over a stream of batches.

    Keeps, for every latent, the number of inputs since it last fired (what "dead"
    means during training: not fired in the last ``dead_after`` inputs) and how often
    it fired since the last `reset_window` (its density).
    """

    def __init__(self, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.since_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.window_counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.window_inputs = 0

    def update(self, counts: Tensor, n_inputs: int) -> None:
        """Add one batch: `counts` from `firing_counts`, over `n_inputs` inputs."""
        self.since_fired += n_inputs
        self.since_fired[counts > 0] = 0
        self.window_counts += counts
        self.window_inputs += n_inputs

    def dead_mask(self, dead_after: int) -> Tensor:
        """Latents that have not fired for `dead_after` inputs or more (bool ``[d_sae]``)."""
        return self.since_fired >= dead_after

    def density(self) -> Tensor:
        """Firing frequency of each latent over the current window."""
        return feature_density(self.window_counts, self.window_inputs)

    def reset_window(self) -> None:
        """Start a new density window (dead tracking is not affected)."""
        self.window_counts.zero_()
        self.window_inputs = 0

    def revive(self, latents: Tensor) -> None:
        """Mark `latents` (indices or a mask) as just fired, e.g. after resampling them."""
        self.since_fired[latents] = 0

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (for checkpoints)."""
        return {
            "since_fired": self.since_fired.clone(),
            "window_counts": self.window_counts.clone(),
            "window_inputs": self.window_inputs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.since_fired.copy_(state["since_fired"])
        self.window_counts.copy_(state["window_counts"])
        self.window_inputs = int(state["window_inputs"])
