"""Multi-head attention: self (causal or bidirectional) or cross, MHA / GQA / MQA.

One module covers the variants through the config:
- ``n_kv_heads < n_heads`` is grouped-query attention: each key/value head serves a
  group of ``n_heads / n_kv_heads`` consecutive query heads (Ainslie et al., 2023);
  ``n_kv_heads = 1`` is multi-query attention (Shazeer, 2019).
- Cross attention (encoder-decoder) reads queries from the decoder and keys/values
  from the encoder output, with the same weights layout.

Queries, keys and values come from one fused projection (one matmul instead of three).
Per-head views in TransformerLens's layout (``W_Q: [head, d_model, d_head]``...) are
properties, so analyses can read and edit per-head weights in place.

Two execution paths give the same numbers (to float rounding):
- fused `scaled_dot_product_attention`, used unless something needs the scores;
- explicit: materialise scores and pattern. Taken when ``hook_attn_scores`` or
  ``hook_pattern`` is hooked, when the config asks for it, or for Shaw relative
  positions (their value term is not expressible in SDPA).
``hook_result`` (each head's write to the residual stream, ``[batch, pos, head,
d_model]``) is only computed when hooked: it costs ``n_heads`` times the memory of the
output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.model.kv_cache import KVCache
from lmscope.model.masking import AttentionContext
from lmscope.model.position import RelativePositionEmbedding, apply_rotary


class Attention(nn.Module):
    """Multi-head attention with a fused QKV projection and an optional KV cache."""

    def __init__(self, cfg: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.cross = cross
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_dim = self.n_heads * self.d_head
        self.kv_dim = self.n_kv_heads * self.d_head
        self.scale = cfg.scale
        self.uses_rope = cfg.positional == "rope" and not cross

        self.qkv = nn.Linear(cfg.d_model, self.q_dim + 2 * self.kv_dim, bias=cfg.qkv_bias)
        self.relative = (
            RelativePositionEmbedding(cfg.relative_max_distance, self.d_head)
            if cfg.positional == "relative" and not cross
            else None
        )
        self.out = nn.Linear(self.q_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.dropout = cfg.dropout

        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        if self.uses_rope:
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]

    # --- TransformerLens-style per-head views of the weights (share storage) ----------
    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        """Query weights per head."""
        return self.qkv.weight[: self.q_dim].view(self.n_heads, self.d_head, -1).transpose(1, 2)

    @property
    def W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """Key weights per key/value head."""
        w = self.qkv.weight[self.q_dim : self.q_dim + self.kv_dim]
        return w.view(self.n_kv_heads, self.d_head, -1).transpose(1, 2)

    @property
    def W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """Value weights per key/value head."""
        w = self.qkv.weight[self.q_dim + self.kv_dim :]
        return w.view(self.n_kv_heads, self.d_head, -1).transpose(1, 2)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """Output weights per head: head h writes ``z_h @ W_O[h]`` to the residual stream."""
        return self.out.weight.view(-1, self.n_heads, self.d_head).permute(1, 2, 0)

    @property
    def needs_pattern(self) -> bool:
        """Whether this forward must materialise scores and pattern (explicit path)."""
        hooked = self.hook_attn_scores.active or self.hook_pattern.active
        if hooked and self.cfg.attn_impl == "sdpa":
            raise LmscopeError(
                "a hook needs the attention scores/pattern but attn_impl='sdpa' never "
                "materialises them; use attn_impl='auto' or 'explicit'."
            )
        return hooked or self.cfg.attn_impl == "explicit" or self.relative is not None

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        ctx: AttentionContext,
        kv_cache: KVCache | None = None,
        source: Float[Tensor, "batch src d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attend from `x` to itself, or to `source` (the encoder output) for cross attention."""
        batch, n_q, _ = x.shape
        q, k, v = self._project(x, source, kv_cache)
        q = self.hook_q(q)
        if k is not None and v is not None:
            k, v = self.hook_k(k), self.hook_v(v)
            if self.uses_rope:
                assert ctx.rope is not None
                cos, sin = ctx.rope
                q = self.hook_rot_q(apply_rotary(q, cos, sin, self.cfg.rope_layout))
                k = self.hook_rot_k(apply_rotary(k, cos, sin, self.cfg.rope_layout))
            # [batch, pos, head, d_head] -> [batch, head, pos, d_head]
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            if kv_cache is not None:
                if self.cross:
                    kv_cache.cross[self.layer] = (k, v)
                else:
                    k, v = kv_cache.update(self.layer, ctx.cache_start, k, v)
        else:  # cross attention whose encoder keys/values are already cached
            assert kv_cache is not None
            k, v = kv_cache.cross[self.layer]  # type: ignore[misc]
        q = q.transpose(1, 2)

        if self.needs_pattern:
            z = self._explicit(q, k, v, ctx)
        else:
            z = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=ctx.mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=ctx.is_causal,
                scale=self.scale,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]

        if self.hook_result.active:
            # Each head's write: z_h @ W_O[h]. [b, p, h, 1, d_head] @ [h, d_head, d_model]
            result = self.hook_result((z.unsqueeze(-2) @ self.W_O).squeeze(-2))
            out = result.sum(dim=2)
            return out + self.out.bias if self.out.bias is not None else out
        return self.out(z.reshape(batch, n_q, self.q_dim))

    def _project(
        self, x: Tensor, source: Tensor | None, kv_cache: KVCache | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Queries (and keys/values unless cached), split into heads: [batch, pos, head, d]."""
        batch, n_q, _ = x.shape
        if not self.cross:
            q, k, v = self.qkv(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
            n_k = n_q
        else:
            # Rows of the fused weight are [W_q; W_k; W_v]: slicing rows is a free view.
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[: self.q_dim], None if b is None else b[: self.q_dim])
            if kv_cache is not None and kv_cache.cross[self.layer] is not None:
                return q.view(batch, n_q, self.n_heads, self.d_head), None, None
            if source is None:
                raise LmscopeError("cross attention needs the encoder output (`source`).")
            kv = F.linear(source, w[self.q_dim :], None if b is None else b[self.q_dim :])
            k, v = kv.split([self.kv_dim, self.kv_dim], dim=-1)
            n_k = source.shape[1]
        q = q.view(batch, n_q, self.n_heads, self.d_head)
        k = k.view(batch, n_k, self.n_kv_heads, self.d_head)
        v = v.view(batch, n_k, self.n_kv_heads, self.d_head)
        return q, k, v

    def _scores_in_one_matmul(
        self, q: Tensor, k: Tensor, mask: Tensor | None
    ) -> Float[Tensor, "batch head q k"] | None:
        """``scale * q k^T + mask`` as one ``baddbmm`` (the GEMM scales and adds the mask
        while it writes, instead of two more passes over the scores); None where that
        does not apply: relative positions, or a mask that differs per row or head."""
        if self.relative is not None or (
            mask is not None and (mask.dim(), *mask.shape[:2]) != (4, 1, 1)
        ):
            return None
        batch, heads, n_q, d = q.shape
        n_k = k.shape[2]
        if mask is None:
            bias = q.new_zeros(1, 1, 1).expand(1, n_q, n_k)
        elif mask.dtype == torch.bool:
            bias = q.new_zeros(1, n_q, n_k).masked_fill_(~mask[0], float("-inf"))
        else:
            bias = mask[0].to(q.dtype)
        scores = torch.baddbmm(
            bias,
            q.reshape(batch * heads, n_q, d),
            k.reshape(batch * heads, n_k, d).mT,
            alpha=self.scale,
        )
        return scores.view(batch, heads, n_q, n_k)

    def _explicit(
        self,
        q: Float[Tensor, "batch head q d_head"],
        k: Float[Tensor, "batch kv_head k d_head"],
        v: Float[Tensor, "batch kv_head k d_head"],
        ctx: AttentionContext,
    ) -> Float[Tensor, "batch head q d_head"]:
        """Attention with materialised scores and pattern (hookable)."""
        group = self.n_heads // self.n_kv_heads
        if group > 1:  # each key/value head serves `group` consecutive query heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        # Scores are [batch, head, q, k], the largest tensors of the forward: every
        # step below works in place on the one fresh matmul output (safe for autograd:
        # the matmul's backward needs q and k, not its result), so caching scores and
        # pattern costs two such tensors per layer, not five.
        mask = ctx.dense_mask(q.shape[2], k.shape[2], q.device)
        scores = self._scores_in_one_matmul(q, k, mask)
        if scores is None:
            scores = q @ k.transpose(-1, -2)
            if self.relative is not None:
                assert ctx.rel_index is not None
                scores += self.relative.score_term(q, ctx.rel_index)
            scores.mul_(self.scale)
            if mask is not None:
                if mask.dtype == torch.bool:
                    scores.masked_fill_(~mask, float("-inf"))
                else:
                    scores += mask
        scores = self.hook_attn_scores(scores)
        # Softmax in float32 whatever the dtype, as the reference implementations do.
        pattern = self.hook_pattern(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))
        if self.training and self.dropout > 0:
            pattern = F.dropout(pattern, self.dropout)
        z = pattern @ v
        if self.relative is not None:
            z = z + self.relative.value_term(pattern, ctx.rel_index)
        return z
