"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

``acts = relu(pre)``; the sparsity loss is ``l1_coefficient * sum_j acts_j * |W_dec[j]|``
averaged over inputs. Weighting by the decoder norm makes the penalty invariant to
moving scale between a latent's encoder and decoder, so the decoder rows need no
unit-norm constraint (they start at norm ``decoder_init_norm``).

Training takes the sparse path (`lmscope.sae.sparse`) once fewer than `SPARSE_BELOW` of
the latents fire (early in training about half do, and the dense path is faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import SAE, TrainForward
from lmscope.sae.sparse import select, sparse_decode, sparse_path_ok

#: Fraction of active latents below which a training step skips the zeros.
SPARSE_BELOW = 0.05


class StandardSAE(SAE):
    """ReLU + decoder-norm-weighted L1."""

    arch = "standard"

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """``relu(pre)``."""
        return F.relu(hidden_pre)

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        if not sparse_path_ok(self, x):
            return super()._training_forward(x, dead_mask)
        bias = self._encoder_bias(self.b_enc)
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc)
            active = pre > 0
            n_active = int(active.sum())
        if n_active > SPARSE_BELOW * active.numel():  # dense: the matmul again, with autograd
            return super()._training_forward(x, dead_mask)
        n = x.shape[0]
        rows, cols = active.nonzero(as_tuple=True)  # input by input
        values = select(x, self.W_enc, bias, pre, rows, cols)  # all > 0: relu is the identity
        recon = sparse_decode(values, rows, cols, n, self.W_dec) + self.b_dec
        return TrainForward(
            reconstruction=self.hook_sae_recons(recon),
            hidden_pre=pre,
            firing_counts=torch.bincount(cols, minlength=self.cfg.d_sae),
            l0=pre.new_tensor(n_active / n),
            extra={"values": values, "cols": cols},
        )

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        norms = self.decoder_norms()
        if fwd.acts is None:  # sparse path: the active values and their latents
            n = fwd.reconstruction.reshape(-1, fwd.reconstruction.shape[-1]).shape[0]
            l1 = (fwd.extra["values"] * norms[fwd.extra["cols"]]).sum() / n
        else:
            acts = fwd.acts.reshape(-1, self.cfg.d_sae)
            # mean_i sum_j acts_ij |W_dec[j]| as (sum_i acts_i) . norms / n: no [n, d_sae] product
            l1 = acts.sum(0) @ norms / acts.shape[0]
        sparsity = (self.cfg.l1_coefficient * sparsity_scale) * l1
        return sparsity, l1.new_zeros(()), {"l1": l1.detach()}
