"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

``acts = relu(pre)``; the sparsity loss is ``l1_coefficient * sum_j acts_j * |W_dec[j]|``
averaged over inputs. Weighting by the decoder norm makes the penalty invariant to
moving scale between a latent's encoder and decoder, so the decoder rows need no
unit-norm constraint (they start at norm ``decoder_init_norm``).
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lmscope.sae.base import SAE, TrainForward


class StandardSAE(SAE):
    """ReLU + decoder-norm-weighted L1."""

    arch = "standard"

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """``relu(pre)``."""
        return F.relu(hidden_pre)

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        assert fwd.acts is not None
        acts = fwd.acts.reshape(-1, self.cfg.d_sae)
        # mean_i sum_j acts_ij |W_dec[j]|, as (sum_i acts_i) . norms / n: no [n, d_sae] product
        l1 = acts.sum(0) @ self.decoder_norms() / acts.shape[0]
        sparsity = (self.cfg.l1_coefficient * sparsity_scale) * l1
        return sparsity, l1.new_zeros(()), {"l1": l1.detach()}
