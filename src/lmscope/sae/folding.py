"""Decoder-norm maintenance and folding, shared by every SAE variant (mixed into `SAE`).

Folding rewrites the weights without changing what the SAE computes: decoder norms into
the latents (`fold_W_dec_norm`), the input normalisation factor into the weights
(`fold_activation_norm_scaling_factor`), as SAELens does before publishing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.errors import SAEError

if TYPE_CHECKING:
    from lmscope.sae.config import SAEConfig


class DecoderNormsAndFolding:
    """Methods over ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and ``cfg`` of an `SAE`."""

    arch: ClassVar[str]
    scale_invariant_latents: ClassVar[bool]
    cfg: SAEConfig
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    input_scale: float | None
    output_scale: float | None

    # --- decoder norms ---------------------------------------------------------------------
    def decoder_norms(self) -> Float[Tensor, " d_sae"]:
        """Norm of each latent's decoder row."""
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (in place)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out the part of each decoder row's gradient along the row.

        With unit-norm rows, that component would only change the norm, which
        `normalize_decoder_` undoes after the step; removing it first keeps Adam's
        moment estimates about directions only (Bricken et al. 2023).
        """
        grad = self.W_dec.grad
        if grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        grad.sub_((grad * unit).sum(1, keepdim=True) * unit)

    # --- folding ---------------------------------------------------------------------------
    @torch.no_grad()
    def _scale_latents_(self, factors: Tensor) -> None:
        """Multiply each latent's encoder side by ``factors`` and its decoder row by 1/factors."""
        factors = factors.to(self.W_enc.dtype)
        self.W_enc.mul_(factors)
        self.W_dec.div_(factors[:, None])
        self.b_enc.mul_(factors)

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Make every decoder row unit norm without changing any output.

        Latent j's activation grows by its decoder norm and its decoder row shrinks by it.
        Refused for TopK variants, whose choice of latents would change.
        """
        if not self.scale_invariant_latents:
            raise SAEError(
                f"folding decoder norms into a {self.arch} SAE would change which latents "
                "are selected; its decoder rows are kept at unit norm during training."
            )
        self._scale_latents_(self.decoder_norms().clamp_min(1e-12))

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float | None = None) -> None:
        """Move the input normalisation into the weights (``normalize_activations='none'``).

        ``(x s - b_dec) W_enc = (x - b_dec / s)(s W_enc)``: the encoder takes s, the
        decoder and b_dec take 1/s (the output's factor for transcoders), so latents and
        outputs are unchanged for raw inputs. `scaling_factor` (SAELens's argument) folds
        that factor instead of the config's, for weights trained on inputs scaled by it.
        """
        s_in, s_out = self.input_scale, self.output_scale
        if scaling_factor is not None:
            s_in = s_out = scaling_factor
        if s_in is not None and s_out is not None:
            self.W_enc.mul_(s_in)
            self.W_dec.div_(s_out)
            self.b_dec.div_(s_out)
            self._fold_skip(s_in, s_out)
        self.cfg = self.cfg.replace(
            normalize_activations="none", activation_scale=None, activation_scale_out=None
        )

    def _fold_skip(self, s_in: float, s_out: float) -> None:
        """Transcoders with a skip path fold the factors into it too."""
