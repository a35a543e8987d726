"""Which keys each query may see, and the other per-forward inputs of attention.

A stack computes one `AttentionContext` per forward and hands it to every layer:
positions, the mask, RoPE's cos/sin and any score bias are the same for all layers,
so they are built once.

Two notions of "where a token is" are kept apart, as Hugging Face does:
- the *slot*: its index in the sequence (and in the KV cache). Causality and sliding
  windows are decided by slots.
- the *position id*: what positional schemes see. With left padding the first real
  token of every row gets position 0, so a padded row computes exactly what it would
  compute alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

#: Mask of an attention call: bool (True = may attend) or additive float.
Mask = Bool[Tensor, "#batch #head #q k"] | Float[Tensor, "#batch #head #q k"]


@dataclass
class AttentionContext:
    """Per-forward inputs shared by every attention layer of one stack."""

    q_pos: Int[Tensor, "#batch q"]
    k_pos: Int[Tensor, "#batch k"]
    #: None with `is_causal` for the plain causal case (SDPA's fastest path), None
    #: without it when every query sees every key.
    mask: Mask | None
    is_causal: bool
    #: RoPE's cos and sin for the current positions, when the model uses RoPE.
    rope: tuple[Tensor, Tensor] | None = None
    #: Shaw relative-position table index of each (query, key) pair.
    rel_index: Int[Tensor, "#batch q k"] | None = None
    #: Slot of the first new key in the KV cache (0 without a cache).
    cache_start: int = 0

    def dense_mask(self, n_q: int, n_k: int, device: torch.device) -> Mask | None:
        """The mask as a tensor, for the explicit path (expands the causal shortcut)."""
        if not self.is_causal:
            return self.mask
        slots = torch.arange(n_k, device=device)
        return (slots[None, :] <= slots[-n_q:, None])[None, None]


def default_positions(
    n_new: int,
    valid: Bool[Tensor, "batch pos"] | None,
    past_valid_count: Int[Tensor, " batch"] | int,
    device: torch.device,
) -> Int[Tensor, "#batch pos"]:
    """Position ids of new tokens: count of real tokens before each one.

    Without padding this is ``past + arange(n)`` (one row, broadcast over the batch);
    with padding, pad tokens do not advance the count, so left-padded rows start at 0.
    """
    if valid is None:
        start = past_valid_count
        if isinstance(start, int):
            return torch.arange(start, start + n_new, device=device)[None]
        return start[:, None] + torch.arange(n_new, device=device)[None]
    counts = (
        valid.long().cumsum(-1) - 1 + torch.as_tensor(past_valid_count, device=device)[..., None]
    )
    return counts.clamp(min=0)


def build_context(
    *,
    q_pos: Int[Tensor, "#batch q"],
    k_pos: Int[Tensor, "#batch k"],
    k_valid: Bool[Tensor, "batch k"] | None,
    causal: bool,
    window: int | None = None,
    cache_start: int = 0,
    rotary: nn.Module | None = None,
    pos_bias: nn.Module | None = None,
    relative_max: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> AttentionContext:
    """Build the mask and position inputs for self-attention over `k_pos` keys."""
    n_q, n_k = q_pos.shape[-1], k_pos.shape[-1]
    device = q_pos.device
    if k_valid is not None and bool(k_valid.all()):
        k_valid = None
    bias = pos_bias(q_pos, k_pos) if pos_bias is not None else None

    rope = rotary(q_pos, dtype) if rotary is not None else None
    rel_index = None
    if relative_max is not None:
        rel_index = (k_pos[:, None, :] - q_pos[:, :, None]).clamp(-relative_max, relative_max)
        rel_index = rel_index + relative_max

    def ctx(mask: Mask | None, is_causal: bool = False) -> AttentionContext:
        return AttentionContext(q_pos, k_pos, mask, is_causal, rope, rel_index, cache_start)

    if causal and window is None and k_valid is None and bias is None and cache_start == 0:
        return ctx(None, is_causal=n_q > 1)

    allowed: Tensor | None = None
    q_slot = torch.arange(cache_start, cache_start + n_q, device=device)[:, None]
    k_slot = torch.arange(n_k, device=device)[None, :]
    if causal:
        allowed = k_slot <= q_slot
    if window is not None:
        offset = q_slot - k_slot
        near = offset < window if causal else offset.abs() < window
        allowed = near if allowed is None else allowed & near
    if allowed is not None:
        allowed = allowed[None, None]  # [1, 1, q, k]
    if k_valid is not None:
        visible = k_valid[:, None, None, :]
        allowed = visible if allowed is None else allowed & visible
    if allowed is not None:
        # A query that sees no key at all (a left-pad token) would get softmax(-inf...) =
        # NaN. Its output is never used, so let it see every key and stay finite.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        if bool(allowed.all()):
            allowed = None

    if bias is None:
        return ctx(allowed)
    additive = bias.to(dtype)
    if allowed is not None:
        additive = additive.masked_fill(~allowed, float("-inf"))
    return ctx(additive)


def build_cross_context(
    q_pos: Int[Tensor, "#batch q"],
    k_valid: Bool[Tensor, "batch k"] | None,
    n_k: int,
) -> AttentionContext:
    """Cross attention: every query sees every valid encoder position."""
    k_pos = torch.arange(n_k, device=q_pos.device)[None]
    mask = None
    if k_valid is not None and not bool(k_valid.all()):
        mask = k_valid[:, None, None, :]
    return AttentionContext(q_pos, k_pos, mask, False)
