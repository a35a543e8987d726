"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs").

Which latents fire and how strongly are decided by two paths sharing one encoder
matrix, so the L1 penalty that decides *whether* a latent fires no longer shrinks *how
much* it fires:

    z     = (x - b_dec) @ W_enc
    gate  = z + b_gate                          fires where gate > 0
    mag   = z * exp(r_mag) + b_mag              magnitude (hook_sae_acts_pre)
    acts  = 1[gate > 0] * relu(mag)

The Heaviside gate has no gradient, so the gate path learns from two extra losses:
an L1 penalty on ``relu(gate)`` (weighted by decoder norms, which are 1 when kept at unit
norm) and the auxiliary loss: ``relu(gate)`` must itself reconstruct the target through
a *frozen* copy of the decoder (gradients reach W_enc and b_gate only), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmscope.sae.base import SAE, TrainForward, affine


class GatedSAE(SAE):
    """Gated encoder (b_gate, b_mag, r_mag instead of b_enc), linear decoder."""

    arch = "gated"

    def _init_latent_params(self) -> None:
        kw = {"dtype": self.cfg.torch_dtype}
        self.b_gate = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))
        self.b_mag = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))
        self.r_mag = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))

    def latent_params(self) -> dict[str, int]:
        return {"W_enc": 1, "W_dec": 0, "b_gate": 0, "b_mag": 0, "r_mag": 0}

    @torch.no_grad()
    def _reset_latents(self, latents: Tensor) -> None:
        for bias in (self.b_gate, self.b_mag, self.r_mag):
            bias[latents] = 0

    def _gated(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(latents, magnitude pre-activations, gate pre-activations) of normalised inputs."""
        z = affine(x, self.W_enc, self._encoder_bias(torch.zeros_like(self.b_gate)))
        gate = z + self.b_gate  # one matmul serves both paths
        magnitude = self.hook_sae_acts_pre(z * self.r_mag.exp() + self.b_mag)
        acts = (gate > 0).to(magnitude.dtype) * F.relu(magnitude)
        return self.hook_sae_acts_post(acts), magnitude, gate

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        acts, magnitude, _ = self._gated(x)
        return acts, magnitude

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        acts, magnitude, gate = self._gated(x)
        fwd = self._training_forward_from(acts, magnitude)
        fwd.extra["gate"] = gate
        return fwd

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        gate_acts = F.relu(fwd.extra["gate"])
        l1 = (gate_acts * self.decoder_norms()).sum(-1).mean()
        sparsity = (self.cfg.l1_coefficient * sparsity_scale) * l1
        via_gate = gate_acts @ self.W_dec.detach() + self.b_dec.detach()
        aux = (via_gate - target).pow(2).sum(-1).mean()
        return sparsity, aux, {"l1": l1.detach(), "gate_recon": aux.detach()}

    @torch.no_grad()
    def _scale_latents_(self, factors: Tensor) -> None:
        factors = factors.to(self.W_enc.dtype)
        self.W_enc.mul_(factors)
        self.W_dec.div_(factors[:, None])
        self.b_gate.mul_(factors)
        self.b_mag.mul_(factors)  # r_mag is a ratio of the two paths: unchanged
