"""A transformer block: attention and MLP reading from and writing to the residual stream.

The residual stream is explicit: every block adds what it computes to it, and each sum
has a hook point (``hook_resid_pre`` -> ``hook_resid_mid`` -> ``hook_resid_post``).

Wirings (the formulas the tests check):
- pre-norm (GPT-2, Llama): ``mid = x + attn(ln1(x))``; ``out = mid + mlp(ln2(mid))``.
- post-norm (original transformer, BERT): ``mid = ln1(x + attn(x))``;
  ``out = ln2(mid + mlp(mid))``. ``hook_resid_mid`` / ``hook_resid_post`` hold the
  sums before the norm, as in TransformerLens.
- parallel (GPT-J, GPT-NeoX): ``out = x + attn(ln1(x)) + mlp(ln2(x))`` (one shared norm
  for GPT-J), which lets attention and MLP run at the same time.
- decoder blocks of an encoder-decoder add cross attention between the two:
  ``ln1 -> attn``, ``ln2 -> cross_attn``, ``ln3 -> mlp`` (TransformerLens's T5 names).
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.hooks import HookPoint
from lmscope.model.attention import Attention
from lmscope.model.kv_cache import KVCache
from lmscope.model.masking import AttentionContext
from lmscope.model.mlp import MLP
from lmscope.model.moe import MoE
from lmscope.model.norm import make_norm


class Block(nn.Module):
    """One residual block; `cross_attention` adds encoder-decoder attention."""

    def __init__(self, cfg: ModelConfig, layer: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre_norm = cfg.norm_placement == "pre"
        self.parallel = cfg.parallel_attn_mlp
        self.has_mlp = not cfg.attn_only
        self.dropout = cfg.dropout

        # Registered in the order the forward pass runs them, so that hook_names() lists
        # hooks in forward order (a post-norm block normalises *after* each sublayer).
        mlp_norm_name = "ln3" if cross_attention else "ln2"
        shared_norm = self.parallel and cfg.parallel_shared_norm
        self.mlp_norm_name = "ln1" if shared_norm else mlp_norm_name
        self.hook_resid_pre = HookPoint()
        if self.pre_norm:
            self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.hook_attn_out = HookPoint()
        if self.has_mlp and not self.parallel:
            self.hook_resid_mid = HookPoint()
        if not self.pre_norm:
            self.ln1 = make_norm(cfg)
        self.cross_attn: Attention | None = None
        if cross_attention:
            if self.pre_norm:
                self.ln2 = make_norm(cfg)
            self.cross_attn = Attention(cfg, layer, cross=True)
            self.hook_cross_attn_out = HookPoint()
            self.hook_resid_mid_cross = HookPoint()
            if not self.pre_norm:
                self.ln2 = make_norm(cfg)
        self.mlp: nn.Module | None = None
        if self.has_mlp:
            if self.pre_norm and not shared_norm:
                self.add_module(mlp_norm_name, make_norm(cfg))
            self.mlp = MoE(cfg) if cfg.is_moe else MLP(cfg)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if self.has_mlp and not self.pre_norm:
            self.add_module(mlp_norm_name, make_norm(cfg))

    @property
    def ln_mlp(self) -> nn.Module:
        """The norm of the MLP sublayer (ln2; ln3 with cross attention; ln1 when shared)."""
        return getattr(self, self.mlp_norm_name)

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        ctx: AttentionContext,
        kv_cache: KVCache | None = None,
        source: Float[Tensor, "batch src d_model"] | None = None,
        cross_ctx: AttentionContext | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run the block; `source`/`cross_ctx` are the encoder output and its mask."""
        resid = self.hook_resid_pre(x)
        if self.parallel:
            return self._parallel(resid, ctx, kv_cache)

        attn_in = self.ln1(resid) if self.pre_norm else resid
        attn_out = self.hook_attn_out(self._drop(self.attn(attn_in, ctx, kv_cache)))
        resid = resid + attn_out
        if self.mlp is None:
            resid = self.hook_resid_post(resid)
            return resid if self.pre_norm else self.ln1(resid)
        resid = self.hook_resid_mid(resid)
        if not self.pre_norm:
            resid = self.ln1(resid)

        if self.cross_attn is not None:
            assert cross_ctx is not None
            cross_in = self.ln2(resid) if self.pre_norm else resid
            cross_out = self.cross_attn(cross_in, cross_ctx, kv_cache, source)
            resid = self.hook_resid_mid_cross(resid + self.hook_cross_attn_out(cross_out))
            if not self.pre_norm:
                resid = self.ln2(resid)

        mlp_in = self.ln_mlp(resid) if self.pre_norm else resid
        mlp_out = self.hook_mlp_out(self._drop(self.mlp(mlp_in)))
        resid = self.hook_resid_post(resid + mlp_out)
        return resid if self.pre_norm else self.ln_mlp(resid)

    def _parallel(self, resid: Tensor, ctx: AttentionContext, kv_cache: KVCache | None) -> Tensor:
        assert self.mlp is not None
        attn_in = self.ln1(resid)
        attn_out = self.hook_attn_out(self._drop(self.attn(attn_in, ctx, kv_cache)))
        mlp_in = attn_in if self.mlp_norm_name == "ln1" else self.ln_mlp(resid)
        mlp_out = self.hook_mlp_out(self._drop(self.mlp(mlp_in)))
        return self.hook_resid_post(resid + attn_out + mlp_out)
