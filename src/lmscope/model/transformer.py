"""`Transformer`: a single stack of blocks, decoder-only (GPT, Llama) or encoder-only (BERT).

Read top to bottom, a forward pass is:

    tokens -> embed (+ positions) -> block 0 -> ... -> block n-1 -> final norm -> head

The residual stream ``x`` is the only thing passed from block to block. The head is the
unembedding (logits over the vocabulary) for decoders, the masked-LM head for encoders
that have one, and nothing (the final hidden states are returned) otherwise.
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.model.base import BaseTransformer
from lmscope.model.block import Block
from lmscope.model.embedding import MLMHead, TokenEmbedding, Unembed, make_token_type_embedding
from lmscope.model.kv_cache import KVCache
from lmscope.model.masking import build_context, default_positions
from lmscope.model.norm import make_norm
from lmscope.model.position import make_position_bias, make_position_embedding, make_rotary


class Transformer(BaseTransformer):
    """Decoder-only or encoder-only transformer, with a hook point on every activation."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = make_position_embedding(cfg)
        if self.pos_embed is not None:
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.token_type_embed = make_token_type_embedding(cfg)
        self.ln_embed = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        # Attention-level position machinery, shared by all blocks (no per-layer state).
        self.rotary = make_rotary(cfg)
        self.pos_bias = make_position_bias(cfg, bidirectional=not cfg.is_causal)

        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg) if cfg.final_norm else nn.Identity()

        self.unembed: Unembed | None = None
        self.mlm_head: MLMHead | None = None
        if cfg.mlm_head:
            self.mlm_head = MLMHead(cfg)
        elif cfg.architecture == "decoder":
            self.unembed = Unembed(cfg)
        self.init_weights()
        self.setup_hooks()

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding matrix (the embedding's transpose when tied)."""
        head = self.unembed or (self.mlm_head.unembed if self.mlm_head else None)
        if head is None:
            # Not AttributeError: nn.Module.__getattr__ would replace this message.
            raise LmscopeError("this encoder has no unembedding (mlm_head is false).")
        return (self.embed.weight if head.weight is None else head.weight).T

    def cached_layers(self) -> int:
        """Causal stacks cache every layer; bidirectional ones cannot decode incrementally."""
        return self.cfg.n_layers if self.cfg.is_causal else 0

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens."""
        return KVCache(self.cfg.n_layers, batch_size, max_len or self.cfg.max_seq_len)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        *,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        position_ids: Int[Tensor, "#batch pos"] | None = None,
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Float[Tensor, "batch pos vocab"] | Float[Tensor, "batch pos d_model"]:
        """Logits for every position (hidden states for an encoder without a head).

        `attention_mask` marks the real tokens (1) and padding (0) of `tokens`; with a
        KV cache it covers only the new tokens (the cache remembers the rest).
        `position_ids` default to counting real tokens, so left padding is harmless.
        """
        _, n_new = tokens.shape
        valid = attention_mask.bool() if attention_mask is not None else None
        if position_ids is None:
            past = kv_cache.valid_count() if kv_cache is not None else 0
            position_ids = default_positions(n_new, valid, past, tokens.device)
        start = 0
        k_pos, k_valid = position_ids, valid
        if kv_cache is not None:
            start = kv_cache.reserve(position_ids.expand(tokens.shape[0], -1), valid)
            k_pos, k_valid = kv_cache.positions, kv_cache.valid

        ctx = build_context(
            q_pos=position_ids,
            k_pos=k_pos,
            k_valid=k_valid,
            causal=self.cfg.is_causal,
            window=self.cfg.sliding_window,
            cache_start=start,
            rotary=self.rotary,
            pos_bias=self.pos_bias,
            relative_max=self.cfg.relative_max_distance
            if self.cfg.positional == "relative"
            else None,
            dtype=self.embed.weight.dtype,
        )
        x = self._embed(
            tokens,
            position_ids,
            token_type_ids,
            self.hook_embed,
            getattr(self, "hook_pos_embed", None),
        )
        for block in self.blocks:
            x = block(x, ctx, kv_cache)
        x = self.ln_final(x)
        if self.unembed is not None:
            return self.unembed(x, self.embed.weight)
        if self.mlm_head is not None:
            return self.mlm_head(x, self.embed.weight)
        return x
