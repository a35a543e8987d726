"""Transcoders: read one activation, reconstruct another (e.g. MLP input -> MLP output).

A transcoder is any SAE variant whose decoder writes a different activation than its
encoder reads: ``W_dec [d_sae, d_out]`` and ``b_dec [d_out]`` live on the output side, so
``b_dec`` is never subtracted from the input, and the training target is the output
activation instead of the input. With ``skip_connection`` a learned linear map
``x @ W_skip`` (``[d_in, d_out]``, initialised at 0) is added to the reconstruction, as
in skip transcoders (Paulo et al. 2025), so the latents only have to explain what a
linear map cannot.

`transcoder_class(variant)` gives the transcoder of any variant (TopK, JumpReLU...):
the `TranscoderMixin` below is the only code transcoders add. A transcoder is chosen by
its config: ``d_out`` or ``hook_name_out`` set (`SAEConfig.is_transcoder`).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor, nn

from lmscope.sae.base import SAE, SAEError


class TranscoderMixin(SAE):
    """What turns an SAE variant into a transcoder (used through `transcoder_class`)."""

    def _init_latent_params(self) -> None:
        super()._init_latent_params()
        if self.cfg.skip_connection:
            shape = (self.cfg.d_in, self.cfg.output_dim)
            self.W_skip = nn.Parameter(torch.zeros(shape, dtype=self.cfg.torch_dtype))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.cfg.skip_connection:
            self.W_skip.zero_()

    @property
    def output_scale(self) -> float | None:
        """The output activation's own normalisation factor (else the input's)."""
        if self.input_scale is None:
            return None
        return self.cfg.activation_scale_out or self.input_scale

    def _skip(self, x: Tensor) -> Tensor | None:
        return x @ self.W_skip if self.cfg.skip_connection else None

    def _fold_skip(self, s_in: float, s_out: float) -> None:
        if self.cfg.skip_connection:
            self.W_skip.mul_(s_in / s_out)

    def _training_target(self, x: Tensor, target: Tensor | None, prescaled: bool) -> Tensor:
        if target is None or target.shape[-1] != self.cfg.output_dim:
            got = "none" if target is None else f"shape {list(target.shape)}"
            raise SAEError(
                f"a transcoder is trained against its output activation "
                f"({self.cfg.hook_name_out or 'the target'}, width {self.cfg.output_dim}); "
                f"got {got}."
            )
        target = target.to(self.W_dec.dtype)
        scale = self.output_scale
        return target * scale if scale is not None and not prescaled else target

    def forward(self, x: Tensor, *, use_error_term: bool = False) -> Tensor:
        """The reconstructed output activation (no error term: the true output is elsewhere)."""
        if use_error_term:
            raise SAEError(
                "a transcoder's error term needs the true output activation, which it does "
                "not read; splice it in at the output hook (output - reconstruction) instead."
            )
        return super().forward(x)


@cache
def transcoder_class(variant: type[SAE]) -> type[SAE]:
    """The transcoder of SAE `variant` (one class per variant, made once)."""
    name = variant.__name__.removesuffix("SAE") + "Transcoder"
    doc = f"{variant.__doc__} As a transcoder: reads one activation, writes another."
    return type(name, (TranscoderMixin, variant), {"__doc__": doc, "__module__": __name__})
