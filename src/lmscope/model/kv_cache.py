"""KV cache: the keys and values of past positions, so decoding a token costs O(length).

Buffers are allocated once per layer at the first write, ``[batch, n_kv_heads,
max_len, d_head]``, and filled in place: no re-allocation or concatenation per step.
With grouped-query attention only the ``n_kv_heads`` key/value heads are stored, which
is the point of GQA. Keys are stored after RoPE, so cached keys are never re-rotated.

The cache also remembers each slot's position id and whether it is a real token or
padding, so that masks and relative positions stay right over many steps.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError


class KVCache:
    """Per-layer key/value buffers plus per-slot position ids and padding flags."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int) -> None:
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        #: Encoder keys/values of each cross-attention layer, computed once per input.
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layers
        self._positions: Tensor | None = None
        self._valid: Tensor | None = None
        self._has_padding = False

    def reserve(
        self, positions: Int[Tensor, "#batch pos"], valid: Bool[Tensor, "batch pos"] | None
    ) -> int:
        """Claim slots for ``positions.shape[-1]`` new tokens; returns the first slot."""
        n_new = positions.shape[-1]
        if self.length + n_new > self.max_len:
            raise LmscopeError(
                f"KV cache is full: {self.length} cached + {n_new} new tokens exceed its "
                f"max_len={self.max_len}; create the cache with a larger max_len."
            )
        if self._positions is None:
            shape = (self.batch_size, self.max_len)
            self._positions = torch.zeros(shape, dtype=torch.long, device=positions.device)
            self._valid = torch.ones(shape, dtype=torch.bool, device=positions.device)
        assert self._valid is not None
        start = self.length
        self._positions[:, start : start + n_new] = positions
        if valid is not None:
            self._valid[:, start : start + n_new] = valid
            self._has_padding = self._has_padding or not bool(valid.all())
        self.length += n_new
        return start

    @property
    def positions(self) -> Int[Tensor, "batch length"]:
        """Position ids of all cached slots."""
        if self._positions is None:
            return torch.zeros(self.batch_size, 0, dtype=torch.long)
        return self._positions[:, : self.length]

    @property
    def valid(self) -> Bool[Tensor, "batch length"] | None:
        """Which cached slots are real tokens; None when none is padding."""
        if self._valid is None or not self._has_padding:
            return None
        return self._valid[:, : self.length]

    def valid_count(self) -> Int[Tensor, " batch"] | int:
        """Real tokens cached per row (the next position id without padding)."""
        if self._valid is None or not self._has_padding:
            return self.length
        return self._valid[:, : self.length].long().sum(-1)

    def update(
        self,
        layer: int,
        start: int,
        k: Float[Tensor, "batch kv_head pos d_head"],
        v: Float[Tensor, "batch kv_head pos d_head"],
    ) -> tuple[Float[Tensor, "batch kv_head k d_head"], Float[Tensor, "batch kv_head k d_head"]]:
        """Write new keys/values at `start`; return all keys/values up to them."""
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            keys = self.keys[layer] = k.new_empty(shape)
            values = self.values[layer] = v.new_empty(shape)
        end = start + k.shape[2]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def nbytes(self) -> int:
        """Bytes held by the key/value buffers."""
        buffers = [t for t in self.keys + self.values if t is not None]
        for pair in self.cross:
            if pair is not None:
                buffers += list(pair)
        return sum(t.numel() * t.element_size() for t in buffers)
