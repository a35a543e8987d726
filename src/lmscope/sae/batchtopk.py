"""BatchTopK SAE (Bussmann et al. 2024): k latents per input *on average* over a batch.

Training keeps the ``k * n`` largest ReLU'd pre-activations of the whole batch of n
inputs, so easy inputs use fewer latents and hard ones more. That rule depends on the
batch, so inference uses a single threshold instead, as SAELens does: an exponential
moving average (rate ``batchtopk_threshold_lr``) of the smallest activation kept in each
training batch. In eval mode ``acts = pre * (pre > threshold)`` (a JumpReLU with one
shared threshold; SAELens saves BatchTopK SAEs as JumpReLU for this reason).

The AuxK loss and unit-norm decoder rows are TopK's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import TrainForward
from lmscope.sae.sparse import grid_rows, select, sparse_decode, sparse_path_ok
from lmscope.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    """BatchTopK in training mode, a learned global threshold in eval mode."""

    arch = "batchtopk"

    def _init_latent_params(self) -> None:
        super()._init_latent_params()
        # float64: the EMA takes steps of ~1% of small numbers (as SAELens).
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """Training: batch top-(k * n); eval: ``pre`` where above the threshold, else 0."""
        if not self.training:
            keep = (hidden_pre > self.threshold.to(hidden_pre.dtype)) & (hidden_pre > 0)
            return hidden_pre * keep
        values, flat = self._batch_select(hidden_pre.reshape(-1, self.cfg.d_sae))
        out = torch.zeros_like(hidden_pre).reshape(-1)
        return out.scatter_(0, flat, values).reshape(hidden_pre.shape)

    def _batch_select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Values and flat indices of the ``k * n`` largest ReLU'd pre-activations."""
        n_keep = min(int(self.cfg.k * pre.shape[0]), pre.numel())
        return F.relu(pre).reshape(-1).topk(n_keep, sorted=False)

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        positive = values[values > 0]
        if positive.numel():
            lr = self.cfg.batchtopk_threshold_lr
            smallest = positive.min().to(self.threshold.dtype)
            self.threshold.mul_(1 - lr).add_(lr * smallest)

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        if not sparse_path_ok(self, x):
            fwd = super()._training_forward(x, dead_mask)  # dense: TopK's, with our activation
            assert fwd.acts is not None
            self._update_threshold(fwd.acts.detach().reshape(-1))
            return fwd
        n, d_sae = x.shape[0], self.cfg.d_sae
        bias = self._encoder_bias(self.b_enc)
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc)
            flat = self._batch_select(pre)[1].sort().values  # input by input
        rows, cols = flat // d_sae, flat % d_sae
        values = F.relu(select(x, self.W_enc, bias, pre, rows, cols))
        recon = sparse_decode(values, rows, cols, n, self.W_dec) + self.b_dec
        self._update_threshold(values.detach())
        active = values.detach() > 0
        fwd = TrainForward(
            reconstruction=self.hook_sae_recons(recon),
            hidden_pre=pre,
            firing_counts=torch.bincount(cols[active], minlength=d_sae),
            l0=active.sum() / n,
        )
        aux = self._aux_indices(pre, dead_mask)
        if aux is not None:
            aux_rows, aux_cols = grid_rows(n, aux[0].shape[1], x.device), aux[0].reshape(-1)
            aux_values = select(x, self.W_enc, bias, pre, aux_rows, aux_cols)
            fwd.extra.update(self._aux_extra(aux_values, aux_rows, aux_cols, aux[1]))
        return fwd

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        sparsity, aux, extra = super()._extra_losses(x, target, fwd, sparsity_scale, dead_mask)
        return sparsity, aux, {**extra, "threshold": self.threshold.detach().clone()}
