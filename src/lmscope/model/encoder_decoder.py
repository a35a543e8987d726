"""`EncoderDecoder`: an encoder stack read by a decoder stack through cross attention (T5).

    source tokens -> embed -> encoder blocks -> encoder_final_ln ----------------+
    target tokens -> embed -> decoder blocks (self-attn, cross-attn, MLP) <------+
                  -> decoder_final_ln -> unembed -> logits

The two stacks share the token embedding. Each stack has its own position bias (T5's
encoder buckets are bidirectional, the decoder's causal). Hook names follow
TransformerLens's T5: ``encoder.{i}.*``, ``decoder.{i}.*``, ``encoder_final_ln``,
``decoder_final_ln``; the decoder's embedding hooks are ``hook_decoder_embed`` /
``hook_decoder_pos_embed``.
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.hooks import HookPoint
from lmscope.model.base import BaseTransformer
from lmscope.model.block import Block
from lmscope.model.embedding import TokenEmbedding, Unembed, make_token_type_embedding
from lmscope.model.kv_cache import KVCache
from lmscope.model.masking import build_context, build_cross_context, default_positions
from lmscope.model.norm import make_norm
from lmscope.model.position import make_position_bias, make_position_embedding, make_rotary


class EncoderDecoder(BaseTransformer):
    """Encoder-decoder transformer with cross attention in every decoder block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = make_position_embedding(cfg)
        self.token_type_embed = make_token_type_embedding(cfg)
        self.ln_embed = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        self.rotary = make_rotary(cfg)
        self.relative_max = cfg.relative_max_distance if cfg.positional == "relative" else None

        self.hook_embed = HookPoint()
        if self.pos_embed is not None:
            self.hook_pos_embed = HookPoint()
        self.encoder_pos_bias = make_position_bias(cfg, bidirectional=True)
        self.encoder = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.encoder_final_ln = make_norm(cfg) if cfg.final_norm else nn.Identity()

        self.hook_decoder_embed = HookPoint()
        if self.pos_embed is not None:
            self.hook_decoder_pos_embed = HookPoint()
        self.decoder_pos_bias = make_position_bias(cfg, bidirectional=False)
        self.decoder = nn.ModuleList(
            Block(cfg, i, cross_attention=True) for i in range(cfg.decoder_layers)
        )
        self.decoder_final_ln = make_norm(cfg) if cfg.final_norm else nn.Identity()
        self.unembed = Unembed(cfg)
        self.init_weights()
        self.setup_hooks()

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding matrix (the embedding's transpose when tied)."""
        weight = self.unembed.weight
        return (self.embed.weight if weight is None else weight).T

    def cached_layers(self) -> int:
        """Decoder self-attention layers (cross-attention keys are cached per source token)."""
        return self.cfg.decoder_layers

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for decoding `batch_size` sequences of up to `max_len` tokens."""
        return KVCache(self.cfg.decoder_layers, batch_size, max_len or self.cfg.max_seq_len)

    def encode(
        self,
        tokens: Int[Tensor, "batch src"],
        *,
        attention_mask: Int[Tensor, "batch src"] | None = None,
    ) -> Float[Tensor, "batch src d_model"]:
        """Run the encoder: final hidden states of the source tokens."""
        valid = attention_mask.bool() if attention_mask is not None else None
        positions = default_positions(tokens.shape[1], valid, 0, tokens.device)
        ctx = build_context(
            q_pos=positions,
            k_pos=positions,
            k_valid=valid,
            causal=False,
            window=self.cfg.sliding_window,
            rotary=self.rotary,
            pos_bias=self.encoder_pos_bias,
            relative_max=self.relative_max,
            dtype=self.embed.weight.dtype,
        )
        x = self._embed(
            tokens, positions, None, self.hook_embed, getattr(self, "hook_pos_embed", None)
        )
        for block in self.encoder:
            x = block(x, ctx)
        return self.encoder_final_ln(x)

    def decode(
        self,
        tokens: Int[Tensor, "batch pos"],
        encoder_out: Float[Tensor, "batch src d_model"],
        *,
        attention_mask: Int[Tensor, "batch src"] | None = None,
        decoder_attention_mask: Int[Tensor, "batch pos"] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Run the decoder on `tokens` reading `encoder_out`; logits for every position."""
        valid = decoder_attention_mask.bool() if decoder_attention_mask is not None else None
        past = kv_cache.valid_count() if kv_cache is not None else 0
        positions = default_positions(tokens.shape[1], valid, past, tokens.device)
        start, k_pos, k_valid = 0, positions, valid
        if kv_cache is not None:
            start = kv_cache.reserve(positions.expand(tokens.shape[0], -1), valid)
            k_pos, k_valid = kv_cache.positions, kv_cache.valid
        ctx = build_context(
            q_pos=positions,
            k_pos=k_pos,
            k_valid=k_valid,
            causal=True,
            window=self.cfg.sliding_window,
            cache_start=start,
            rotary=self.rotary,
            pos_bias=self.decoder_pos_bias,
            relative_max=self.relative_max,
            dtype=self.embed.weight.dtype,
        )
        source_valid = attention_mask.bool() if attention_mask is not None else None
        cross_ctx = build_cross_context(positions, source_valid, encoder_out.shape[1])
        x = self._embed(
            tokens,
            positions,
            None,
            self.hook_decoder_embed,
            getattr(self, "hook_decoder_pos_embed", None),
        )
        for block in self.decoder:
            x = block(x, ctx, kv_cache, source=encoder_out, cross_ctx=cross_ctx)
        return self.unembed(self.decoder_final_ln(x), self.embed.weight)

    def forward(
        self,
        tokens: Int[Tensor, "batch src"],
        decoder_tokens: Int[Tensor, "batch pos"],
        *,
        attention_mask: Int[Tensor, "batch src"] | None = None,
        decoder_attention_mask: Int[Tensor, "batch pos"] | None = None,
        kv_cache: KVCache | None = None,
        encoder_out: Float[Tensor, "batch src d_model"] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Encode `tokens` (unless `encoder_out` is given), then decode `decoder_tokens`."""
        if encoder_out is None:
            encoder_out = self.encode(tokens, attention_mask=attention_mask)
        return self.decode(
            decoder_tokens,
            encoder_out,
            attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask,
            kv_cache=kv_cache,
        )
