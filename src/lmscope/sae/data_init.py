"""What an SAE learns from its first batch before training: input scale and b_dec.

- Normalisation (``normalize_activations="expected_average_only_in"``): the factor
  ``sqrt(d) / mean |x|`` that gives inputs a mean norm of sqrt(d), so one learning rate
  and one sparsity coefficient suit any model width and layer (Anthropic, April 2024).
  A source that already normalises its batches (the activation store) says so with a
  ``scaling_factors`` mapping (hook -> factor); the SAE then records those factors and
  is fed the batches as they are ("prescaled").
- ``b_dec``: the geometric median of the batch (of the targets, for transcoders), a
  robust centre of the data for the decoder's bias (and the encoder's input offset).
- Whatever else a variant sets from data (`SAE.initialise_from_data`): JumpReLU's
  thresholds with ``jumprelu_init_l0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lmscope.sae.base import SAE, SAEError
from lmscope.sae.geometric_median import geometric_median


def norm_factor(x: Tensor) -> float:
    """``sqrt(d) / mean norm``: the factor making the mean norm of `x`'s rows sqrt(d)."""
    mean_norm = float(x.float().norm(dim=-1).mean())
    if mean_norm == 0.0:
        raise SAEError("the first batch is all zeros: cannot estimate a normalisation factor.")
    return x.shape[-1] ** 0.5 / mean_norm


def source_factor(factors: Mapping[str, float], key: str | None) -> float | None:
    """A normalising source's factor for hook `key` (a one-hook source: its only one)."""
    if key is None:
        return None
    if key in factors:
        return float(factors[key])
    if len(factors) == 1:
        return float(next(iter(factors.values())))
    return None


@torch.no_grad()
def initialise_from_batch(
    sae: SAE,
    x: Tensor,
    target: Tensor | None,
    *,
    input_key: str,
    source: Any,
    median_init: bool,
) -> bool:
    """Set `sae`'s normalisation factors and b_dec from a first batch; returns whether
    the source's batches come already normalised (``prescaled``).

    `input_key` names `x`'s hook in the source's ``scaling_factors``, if it has any.
    """
    cfg = sae.cfg
    factors = getattr(source, "scaling_factors", None) or {}
    prescaled = False
    s_in = source_factor(factors, input_key)
    if s_in is not None:  # the source normalises: record its factors
        s_out = source_factor(factors, cfg.hook_name_out) if cfg.is_transcoder else None
        sae.cfg = cfg.replace(
            normalize_activations="expected_average_only_in",
            activation_scale=s_in,
            activation_scale_out=s_out,
        )
        prescaled = True
    elif cfg.normalize_activations == "expected_average_only_in":
        changes: dict[str, float] = {}
        if cfg.activation_scale is None:
            changes["activation_scale"] = norm_factor(x)
        if cfg.is_transcoder and cfg.activation_scale_out is None and target is not None:
            changes["activation_scale_out"] = norm_factor(target)
        sae.cfg = cfg.replace(**changes) if changes else cfg
    if median_init:
        device = sae.b_dec.device
        x_n = sae.normalize_input(x.to(device), prescaled=prescaled)
        t_n = sae._training_target(x_n, None if target is None else target.to(device), prescaled)
        median = geometric_median(t_n.reshape(-1, t_n.shape[-1]).float())
        sae.b_dec.copy_(median.to(sae.b_dec.dtype))
    sae.initialise_from_data(sae.normalize_input(x.to(sae.b_dec.device), prescaled=prescaled))
    return prescaled
