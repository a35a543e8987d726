"""Relative position representations (Shaw, Uszkoreit & Vaswani, 2018).

Each attention layer learns two tables of vectors indexed by the clipped offset
``clip(k_pos - q_pos, -K, K)``: ``a^K`` is added to the keys and ``a^V`` to the values:

    e_ij = q_i . (k_j + a^K_ij) * scale        z_i = sum_j p_ij (v_j + a^V_ij)

Clipping at ``K = relative_max_distance`` makes every offset beyond K share one
vector, so the model generalises to lengths it never saw. The tables are shared by the
heads of a layer, as in the paper.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class RelativePositionEmbedding(nn.Module):
    """Key and value tables ``[2K + 1, d_head]`` of one attention layer."""

    def __init__(self, max_distance: int, d_head: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.key = nn.Parameter(torch.zeros(2 * max_distance + 1, d_head))
        self.value = nn.Parameter(torch.zeros(2 * max_distance + 1, d_head))

    def index(self, q_pos: Int[Tensor, "#batch q"], k_pos: Int[Tensor, "#batch k"]) -> Tensor:
        """Table row of each (query, key) pair: ``[batch, q, k]``."""
        k = self.max_distance
        return (k_pos[:, None, :] - q_pos[:, :, None]).clamp(-k, k) + k

    def score_term(
        self, q: Float[Tensor, "batch head q d_head"], index: Int[Tensor, "#batch q k"]
    ) -> Float[Tensor, "batch head q k"]:
        """``q_i . a^K_ij`` for every pair (added to ``q . k`` before scaling)."""
        table = self.key[index]  # [batch, q, k, d_head]
        # [batch, q, head, d_head] @ [batch, q, d_head, k] -> [batch, q, head, k]
        out = torch.matmul(q.transpose(1, 2), table.transpose(-1, -2))
        return out.transpose(1, 2)

    def value_term(
        self, pattern: Float[Tensor, "batch head q k"], index: Int[Tensor, "#batch q k"]
    ) -> Float[Tensor, "batch head q d_head"]:
        """``sum_j p_ij a^V_ij`` for every query (added to ``pattern @ v``)."""
        table = self.value[index]  # [batch, q, k, d_head]
        # [batch, q, head, k] @ [batch, q, k, d_head] -> [batch, q, head, d_head]
        out = torch.matmul(pattern.transpose(1, 2), table)
        return out.transpose(1, 2)
