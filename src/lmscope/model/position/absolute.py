"""Absolute position embeddings: a vector per position, added to the token embedding.

- Sinusoidal (Vaswani et al., 2017): fixed, PE(p, 2i) = sin(p / 10000^(2i/d)) and
  PE(p, 2i+1) = cos(p / 10000^(2i/d)). The paper interleaves sin and cos; many
  libraries concatenate ``[sin..., cos...]`` instead, which is the same set of
  features in another order, so checkpoints differ: both layouts are offered.
- Learned (GPT-2, BERT): one trained vector per position up to ``max_seq_len``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.errors import LmscopeError


class SinusoidalPositionEmbedding(nn.Module):
    """Fixed sin/cos features of the position; `interleaved` or concatenated layout."""

    def __init__(self, d_model: int, interleaved: bool = True, base: float = 10000.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.interleaved = interleaved
        self.base = base

    def forward(self, positions: Int[Tensor, "#batch pos"]) -> Float[Tensor, "#batch pos d_model"]:
        d = self.d_model
        n_freq = (d + 1) // 2
        # Frequencies 1 / base^(2i/d), in float64 so that large positions keep their digits.
        i = torch.arange(n_freq, device=positions.device, dtype=torch.float64)
        inv_freq = torch.exp(-math.log(self.base) * (2 * i) / d)
        angles = positions.to(torch.float64)[..., None] * inv_freq  # [batch, pos, n_freq]
        sin, cos = angles.sin(), angles.cos()
        if self.interleaved:  # [sin f0, cos f0, sin f1, cos f1, ...]
            pe = torch.stack((sin, cos), dim=-1).flatten(-2)[..., :d]
        else:  # [sin f0, sin f1, ..., cos f0, cos f1, ...]
            pe = torch.cat((sin, cos[..., : d - n_freq]), dim=-1)
        return pe.float()  # the caller casts to the model dtype


class LearnedPositionEmbedding(nn.Module):
    """A trained vector per position (``W_pos``: ``[max_seq_len, d_model]``)."""

    def __init__(self, max_seq_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_seq_len, d_model))

    @property
    def W_pos(self) -> Float[Tensor, "max_seq_len d_model"]:
        """TransformerLens name for the position embedding matrix."""
        return self.weight

    def forward(self, positions: Int[Tensor, "#batch pos"]) -> Float[Tensor, "#batch pos d_model"]:
        n = self.weight.shape[0]
        # The check reads a value back from the tensor; under torch.compile that would
        # split the graph, so compiled code skips it (indexing still fails loudly).
        if not torch.compiler.is_compiling() and positions.numel() and int(positions.max()) >= n:
            raise LmscopeError(
                f"position {int(positions.max())} is beyond the {n} learned positions of "
                f"this model (max_seq_len={n}); use a shorter input."
            )
        return self.weight[positions]
