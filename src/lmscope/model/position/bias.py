"""Position schemes that add a per-head bias to the attention scores.

- ALiBi (Press et al., 2022): ``-slope_h * |i - j|``, no parameters; the slopes are a
  geometric sequence per head. Computed once per forward and shared by all layers.
- T5 relative bias (Raffel et al., 2020): a learned scalar per head for each bucket of
  relative distance (exact for short distances, log-spaced up to ``max_distance``).
  T5 computes it in the first layer of a stack and reuses it in every layer, so here it
  belongs to the stack, not to one attention layer.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def alibi_slopes(n_heads: int) -> Float[Tensor, " head"]:
    """ALiBi's head slopes: 2^(-8/n), 2^(-16/n), ... for n a power of two.

    For other head counts the paper takes the slopes of the closest smaller power of two
    and fills the rest with every other slope of the next power of two.
    """

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = geometric(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


class ALiBi(nn.Module):
    """Linear distance penalty ``-slope_h * |q_pos - k_pos|`` on attention scores."""

    slopes: Tensor

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        """(Re)compute the slopes on `device`."""
        self.slopes = alibi_slopes(self.n_heads).to(device)

    # Slopes stay float32 on whatever device the model moves to (see RotaryEmbedding).
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.init_buffers(self.slopes.device)
        return self

    def forward(
        self, q_pos: Int[Tensor, "#batch q"], k_pos: Int[Tensor, "#batch k"]
    ) -> Float[Tensor, "#batch head q k"]:
        distance = (q_pos[:, None, :, None] - k_pos[:, None, None, :]).abs().float()
        return -self.slopes[None, :, None, None] * distance


def t5_relative_bucket(
    relative: Int[Tensor, "*shape"], bidirectional: bool, num_buckets: int, max_distance: int
) -> Int[Tensor, "*shape"]:
    """T5's bucket of each relative position ``k_pos - q_pos``.

    Bidirectional stacks spend half the buckets on keys after the query. Within a
    direction, distances below ``num_buckets / 2`` get a bucket each; longer ones share
    log-spaced buckets, the last of which holds everything from ``max_distance`` on.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # keys after the query all land in bucket 0
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # clamp(min=1) keeps log() finite where the small branch is taken anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class T5RelativeBias(nn.Module):
    """Learned per-head bias for each bucket of relative distance (``[buckets, heads]``)."""

    def __init__(
        self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, n_heads))

    def forward(
        self, q_pos: Int[Tensor, "#batch q"], k_pos: Int[Tensor, "#batch k"]
    ) -> Float[Tensor, "#batch head q k"]:
        relative = k_pos[:, None, :] - q_pos[:, :, None]  # [batch, q, k]
        buckets = t5_relative_bucket(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.weight[buckets].permute(0, 3, 1, 2)
