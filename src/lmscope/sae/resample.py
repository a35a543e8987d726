"""Resampling dead latents (Anthropic, "Towards Monosemanticity", 2023).

A latent that has stopped firing contributes nothing and gets no gradient. Resampling
gives it a fresh start on inputs the SAE reconstructs badly:

1. score each input of a batch by its squared reconstruction error, and draw one input
   per dead latent with probability proportional to the *square* of that loss;
2. set the latent's decoder row to the drawn (target) vector, centred on b_dec and
   normalised, and its encoder column to the same direction (the input's, for
   transcoders) times 0.2 times the mean encoder norm of the live latents;
3. reset its other per-latent parameters (``b_enc`` -> 0, a JumpReLU threshold -> its
   initial value...) and Adam's moment estimates for everything that was reset, so
   stale momentum does not immediately undo the new direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmscope.sae.base import SAE

ENCODER_SCALE = 0.2  # the new encoder column's norm, relative to live ones (Anthropic)


@torch.no_grad()
def resample_dead_latents(
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    dead: Tensor,
    x: Tensor,
    target: Tensor,
    generator: torch.Generator,
) -> int:
    """Re-initialise the latents marked in `dead` (bool ``[d_sae]``); returns how many.

    `x` and `target` are a batch in the SAE's normalised units (target is `x` for an
    SAE, the output activation for a transcoder). `generator` draws the inputs.
    """
    latents = dead.nonzero().flatten()
    n = latents.numel()
    if n == 0:
        return 0
    recon = sae._decode(sae._encode(x)[0])
    skip = sae._skip(x)
    if skip is not None:
        recon = recon + skip
    loss = (recon - target).pow(2).sum(-1).double()
    weights = loss.pow(2)
    if not torch.isfinite(weights.sum()) or float(weights.sum()) == 0.0:
        weights = torch.ones_like(weights)
    rows = torch.multinomial(
        weights.cpu(), n, replacement=n > weights.numel(), generator=generator
    ).to(x.device)

    def unit(v: Tensor) -> Tensor:
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    decoder_dirs = unit(target[rows] - sae.b_dec)
    encoder_dirs = unit(sae._center(x[rows]))
    alive = ~dead
    encoder_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else 1.0
    decoder_norm = 1.0
    if not sae.cfg.normalize_decoder and bool(alive.any()):
        decoder_norm = float(sae.decoder_norms()[alive].mean())
    sae.W_dec[latents] = (decoder_dirs * decoder_norm).to(sae.W_dec.dtype)
    sae.W_enc[:, latents] = (encoder_dirs * ENCODER_SCALE * encoder_norm).T.to(sae.W_enc.dtype)
    sae._reset_latents(latents)
    _reset_adam_moments(sae, optimizer, latents)
    return n


def _reset_adam_moments(sae: SAE, optimizer: torch.optim.Optimizer, latents: Tensor) -> None:
    """Zero Adam's running moments of the resampled latents' slices."""
    for name, axis in sae.latent_params().items():
        state = optimizer.state.get(getattr(sae, name))
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                state[key].index_fill_(axis, latents.to(state[key].device), 0.0)
