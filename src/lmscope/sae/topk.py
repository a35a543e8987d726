"""TopK SAE (Gao et al. 2024): exactly the k largest pre-activations survive.

``acts = relu(topk_k(pre))``: every input uses at most k latents, so sparsity needs no
penalty and no coefficient to tune. Decoder rows stay at unit norm.

Latents that stop firing get no gradient from the reconstruction at all; the AuxK loss
revives them: the top ``aux_k`` pre-activations among the *dead* latents (not fired
for the trainer's ``dead_after_tokens``) must reconstruct the residual error of the main
reconstruction, weighted by ``aux_k_coefficient`` (scaled down while few are dead).

Training touches only the selected entries after the encoder's matmul: the
reconstruction is an ``embedding_bag`` over the k chosen decoder rows (k * d_out
multiply-adds per input instead of d_sae * d_out), and `SparseTopKEncoder`'s backward
builds the encoder's gradient from the k (+ aux_k) selected entries per input with a
sparse matmul instead of a dense ``[d_in, n] x [n, d_sae]`` one. A hook on the
pre-activations or latents switches back to the dense path, which computes the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import SAE, TrainForward

_SPARSE_DTYPES = (torch.float32, torch.float64)


class SparseTopKEncoder(torch.autograd.Function):
    """``pre = x @ W + bias``; each row's top k, and its top `k_aux` among `candidates`.

    Returns (values, indices, aux values, aux indices, pre). Only the values carry
    gradients, and the backward only reads the selected entries.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        k: int,
        candidates: Tensor | None,
        k_aux: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        pre = torch.addmm(bias, x, weight)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        if k_aux > 0 and candidates is not None:
            masked = pre.masked_fill(~candidates, float("-inf"))
            aux_values, aux_indices = masked.topk(k_aux, dim=-1, sorted=False)
        else:
            aux_values, aux_indices = pre.new_zeros(pre.shape[0], 0), indices[:, :0]
        ctx.save_for_backward(x, weight, indices, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices, pre)
        return values, indices, aux_values, aux_indices, pre

    @staticmethod
    def backward(
        ctx: Any, grad_values: Tensor | None, _i: Any, grad_aux: Tensor | None, _a: Any, _p: Any
    ) -> tuple[Tensor | None, ...]:
        x, weight, indices, aux_indices = ctx.saved_tensors
        n, d_sae = x.shape[0], weight.shape[1]
        if grad_values is None:
            grad_values = x.new_zeros(indices.shape)
        if grad_aux is None:
            grad_aux = x.new_zeros(aux_indices.shape)
        latents = torch.cat([indices, aux_indices], 1)
        grads = torch.cat([grad_values, grad_aux], 1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # row i: sum_j g_ij W[:, latent_ij]
            grad_x = F.embedding_bag(
                latents, weight.T.contiguous(), mode="sum", per_sample_weights=grads
            )
        if ctx.needs_input_grad[1]:  # column j of W: sum over the rows that selected j
            rows = torch.arange(n, device=x.device).repeat_interleave(latents.shape[1])
            selected = torch.sparse_coo_tensor(
                torch.stack([latents.reshape(-1), rows]),
                grads.reshape(-1),
                (d_sae, n),
                check_invariants=False,
            )
            grad_w = torch.sparse.mm(selected, x).T.contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = x.new_zeros(d_sae).index_add_(0, latents.reshape(-1), grads.reshape(-1))
        return grad_x, grad_w, grad_b, None, None, None


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

    def _aux_size(self, dead_mask: Tensor | None) -> tuple[int, float]:
        """(dead latents in the AuxK loss, its scale): fewer dead than aux_k, a smaller loss."""
        if dead_mask is None or self.cfg.aux_k_coefficient == 0:
            return 0, 0.0
        n_dead = int(dead_mask.sum())
        k_aux = self.cfg.aux_k or max(self.cfg.d_in // 2, 1)
        return min(k_aux, n_dead), min(n_dead / k_aux, 1.0)

    def _aux_selection(self, pre: Tensor, dead_mask: Tensor | None) -> dict[str, Tensor]:
        """The AuxK inputs from dense pre-activations (the dense path)."""
        k_aux, scale = self._aux_size(dead_mask)
        if k_aux == 0:
            return {}
        assert dead_mask is not None
        pre = pre.reshape(-1, self.cfg.d_sae)
        masked = pre.masked_fill(~dead_mask.to(pre.device), float("-inf"))
        values, indices = masked.topk(k_aux, dim=-1, sorted=False)
        return {"aux_values": values, "aux_indices": indices, "aux_scale": pre.new_tensor(scale)}

    def _sparse_ok(self, x: Tensor) -> bool:
        hooked = self.hook_sae_acts_pre.active or self.hook_sae_acts_post.active
        return not hooked and x.dim() == 2 and x.dtype in _SPARSE_DTYPES

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        if not self._sparse_ok(x):
            fwd = super()._training_forward(x, dead_mask)
            fwd.extra.update(self._aux_selection(fwd.hidden_pre, dead_mask))
            return fwd
        k_aux, scale = self._aux_size(dead_mask)
        candidates = dead_mask.to(x.device)[None] if k_aux else None
        values, indices, aux_values, aux_indices, pre = SparseTopKEncoder.apply(
            x, self.W_enc, self._encoder_bias(self.b_enc), int(self.cfg.k), candidates, k_aux
        )
        values = F.relu(values)
        recon = self.hook_sae_recons(self._sparse_decode(values, indices) + self.b_dec)
        active = values.detach() > 0
        extra = {}
        if k_aux:
            extra = {"aux_values": aux_values, "aux_indices": aux_indices}
            extra["aux_scale"] = x.new_tensor(scale)
        return TrainForward(
            reconstruction=recon,
            hidden_pre=pre,
            firing_counts=torch.bincount(indices[active], minlength=self.cfg.d_sae),
            l0=active.sum(-1).float().mean(),
            extra=extra,
        )

    def _aux_loss(self, target: Tensor, fwd: TrainForward) -> Tensor:
        """AuxK: the top dead latents reconstruct what the live ones missed."""
        if "aux_values" not in fwd.extra:
            return fwd.reconstruction.new_zeros(())
        residual = (target - fwd.reconstruction).detach()
        residual = residual.reshape(-1, residual.shape[-1])
        aux_recon = self._sparse_decode(fwd.extra["aux_values"], fwd.extra["aux_indices"])
        loss = (aux_recon - residual).pow(2).sum(-1).mean()
        return (self.cfg.aux_k_coefficient * fwd.extra["aux_scale"]) * loss

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
