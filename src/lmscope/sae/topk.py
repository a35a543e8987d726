"""TopK SAE (Gao et al. 2024): exactly the k largest pre-activations survive.

``acts = relu(topk_k(pre))``: every input uses at most k latents, so sparsity needs no
penalty and no coefficient to tune. Decoder rows stay at unit norm.

Latents that stop firing get no gradient from the reconstruction at all; the AuxK loss
revives them: the top ``aux_k`` pre-activations among the *dead* latents (not fired
for the trainer's ``dead_after_tokens``) must reconstruct the residual error of the main
reconstruction, weighted by ``aux_k_coefficient`` (scaled down while few are dead).

Training takes the sparse path (`lmscope.sae.sparse`): after the encoder's matmul only
the k (+ aux_k) selected entries per input are touched. A hook on the pre-activations
or latents switches to the dense path, which computes the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import SAE, TrainForward
from lmscope.sae.sparse import grid_rows, select, sparse_decode, sparse_path_ok


class TopKSAE(SAE):
    """TopK activation with the AuxK loss for dead latents."""

    arch = "topk"
    scale_invariant_latents = False

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """Dense latents: the k largest pre-activations (ReLU'd), zeros elsewhere."""
        values, indices = hidden_pre.topk(int(self.cfg.k), dim=-1, sorted=False)
        return torch.zeros_like(hidden_pre).scatter_(-1, indices, F.relu(values))

    def _aux_size(self, dead_mask: Tensor | None) -> tuple[int, float]:
        """(dead latents in the AuxK loss, its scale): fewer dead than aux_k, a smaller loss."""
        if dead_mask is None or self.cfg.aux_k_coefficient == 0:
            return 0, 0.0
        n_dead = int(dead_mask.sum())
        k_aux = self.cfg.aux_k or max(self.cfg.d_in // 2, 1)
        return min(k_aux, n_dead), min(n_dead / k_aux, 1.0)

    def _aux_indices(self, pre: Tensor, dead_mask: Tensor | None) -> tuple[Tensor, float] | None:
        """Each input's top dead latents (``[n, k_aux]``) and the loss scale, if any are dead."""
        k_aux, scale = self._aux_size(dead_mask)
        if k_aux == 0:
            return None
        assert dead_mask is not None
        masked = pre.detach().masked_fill(~dead_mask.to(pre.device), float("-inf"))
        return masked.topk(k_aux, dim=-1, sorted=False).indices, scale

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        if not sparse_path_ok(self, x):
            fwd = super()._training_forward(x, dead_mask)
            pre = fwd.hidden_pre.reshape(-1, self.cfg.d_sae)
            aux = self._aux_indices(pre, dead_mask)
            if aux is not None:  # the dense path: gather from the differentiable pre
                n, k_aux = aux[0].shape
                rows, cols = grid_rows(n, k_aux, pre.device), aux[0].reshape(-1)
                fwd.extra.update(self._aux_extra(pre[rows, cols], rows, cols, aux[1]))
            return fwd
        n, k = x.shape[0], int(self.cfg.k)
        bias = self._encoder_bias(self.b_enc)
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc)
            cols = pre.topk(k, dim=-1, sorted=False).indices.reshape(-1)
        rows = grid_rows(n, k, x.device)
        values = F.relu(select(x, self.W_enc, bias, pre, rows, cols))
        recon = sparse_decode(values, rows, cols, n, self.W_dec) + self.b_dec
        active = values.detach() > 0
        fwd = TrainForward(
            reconstruction=self.hook_sae_recons(recon),
            hidden_pre=pre,
            firing_counts=torch.bincount(cols[active], minlength=self.cfg.d_sae),
            l0=active.sum() / n,
        )
        aux = self._aux_indices(pre, dead_mask)
        if aux is not None:
            aux_rows, aux_cols = grid_rows(n, aux[0].shape[1], x.device), aux[0].reshape(-1)
            aux_values = select(x, self.W_enc, bias, pre, aux_rows, aux_cols)
            fwd.extra.update(self._aux_extra(aux_values, aux_rows, aux_cols, aux[1]))
        return fwd

    @staticmethod
    def _aux_extra(values: Tensor, rows: Tensor, cols: Tensor, scale: float) -> dict[str, Tensor]:
        return {
            "aux_values": values,
            "aux_rows": rows,
            "aux_cols": cols,
            "aux_scale": values.new_tensor(scale),
        }

    def _aux_loss(self, target: Tensor, fwd: TrainForward) -> Tensor:
        """AuxK: the top dead latents reconstruct what the live ones missed."""
        if "aux_values" not in fwd.extra:
            return fwd.reconstruction.new_zeros(())
        residual = (target - fwd.reconstruction).detach()
        residual = residual.reshape(-1, residual.shape[-1])
        e = fwd.extra
        recon = sparse_decode(
            e["aux_values"], e["aux_rows"], e["aux_cols"], residual.shape[0], self.W_dec
        )
        loss = (recon - residual).pow(2).sum(-1).mean()
        return (self.cfg.aux_k_coefficient * e["aux_scale"]) * loss

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        aux = self._aux_loss(target, fwd)
        return fwd.reconstruction.new_zeros(()), aux, {"aux_k": aux.detach()}
