"""TopK SAE (Gao et al. 2024): exactly the k largest pre-activations survive.

``acts = relu(topk_k(pre))``: every input uses at most k latents, so sparsity needs no
penalty and no coefficient to tune. Decoder rows stay at unit norm.

Latents that stop firing get no gradient from the reconstruction at all; the AuxK loss
revives them: the top ``aux_k`` pre-activations among the *dead* latents (not fired
for the trainer's ``dead_after_tokens``) must reconstruct the residual error of the main
reconstruction, weighted by ``aux_k_coefficient`` (scaled down while few are dead).

Training never builds the dense ``[n, d_sae]`` latent matrix: the reconstruction is an
``embedding_bag`` over the k chosen decoder rows (k * d_out multiply-adds per input
instead of d_sae * d_out), unless a hook on ``hook_sae_acts_post`` needs the dense form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import SAE, TrainForward


class TopKSAE(SAE):
    """TopK activation with the AuxK loss for dead latents."""

    arch = "topk"
    scale_invariant_latents = False

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Values (after ReLU) and indices of each input's k largest pre-activations."""
        values, indices = pre.topk(int(self.cfg.k), dim=-1, sorted=False)
        return F.relu(values), indices

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """Dense latents: the k largest pre-activations (ReLU'd), zeros elsewhere."""
        values, indices = self._select(hidden_pre)
        return torch.zeros_like(hidden_pre).scatter_(-1, indices, values)

    def _sparse_decode(
        self, values: Tensor, indices: Tensor, offsets: Tensor | None = None
    ) -> Tensor:
        """``sum_j values_j W_dec[indices_j]`` per input, without a dense latent matrix."""
        return F.embedding_bag(indices, self.W_dec, offsets, mode="sum", per_sample_weights=values)

    def _training_forward(self, x: Tensor) -> TrainForward:
        if self.hook_sae_acts_post.active or x.dim() != 2:
            return super()._training_forward(x)
        pre = self._hidden_pre(x)
        values, indices = self._select(pre)
        recon = self.hook_sae_recons(self._sparse_decode(values, indices) + self.b_dec)
        active = values.detach() > 0
        return TrainForward(
            reconstruction=recon,
            hidden_pre=pre,
            firing_counts=torch.bincount(indices[active], minlength=self.cfg.d_sae),
            l0=active.sum(-1).float().mean(),
        )

    def _aux_loss(self, target: Tensor, fwd: TrainForward, dead_mask: Tensor | None) -> Tensor:
        """AuxK: the top dead latents reconstruct what the live ones missed."""
        zero = fwd.reconstruction.new_zeros(())
        if dead_mask is None or self.cfg.aux_k_coefficient == 0:
            return zero
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return zero
        k_aux = self.cfg.aux_k or max(self.cfg.d_in // 2, 1)
        scale = min(n_dead / k_aux, 1.0)  # fewer dead latents than k_aux: a smaller loss
        pre = fwd.hidden_pre.reshape(-1, self.cfg.d_sae)
        candidates = pre.masked_fill(~dead_mask.to(pre.device), float("-inf"))
        values, indices = candidates.topk(min(k_aux, n_dead), dim=-1, sorted=False)
        residual = (target - fwd.reconstruction).detach().reshape(pre.shape[0], -1)
        aux_recon = self._sparse_decode(values, indices)
        loss = (aux_recon - residual).pow(2).sum(-1).mean()
        return (self.cfg.aux_k_coefficient * scale) * loss

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        aux = self._aux_loss(target, fwd, dead_mask)
        return fwd.reconstruction.new_zeros(()), aux, {"aux_k": aux.detach()}
