"""What every lmscope model shares: config, initialisation, embedding step, counting, saving.

The architectures themselves (`Transformer` for decoder-only and encoder-only models,
`EncoderDecoder`) only describe their forward pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.hooks import HookedModule, HookPoint
from lmscope.model import stats
from lmscope.model.layout import undo_slow_layout
from lmscope.model.moe import MoE
from lmscope.serialization import write_json, write_safetensors


class BaseTransformer(HookedModule):
    """Shared machinery of lmscope models (not used directly)."""

    cfg: ModelConfig
    embed: nn.Module
    pos_embed: nn.Module | None
    token_type_embed: nn.Embedding | None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # --- construction ------------------------------------------------------------------
    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, init_std), zero biases, norms that start as identity.

        Projections that write into the residual stream (attention ``out``, MLP
        ``fc_out``) get std / sqrt(2 * n_layers): every block adds two such writes, and
        this keeps the stream's variance from growing with depth (GPT-2 paper, 2.3).
        """
        std = self.cfg.init_std
        n_residual_writes = 2 * (self.cfg.n_layers + self.cfg.decoder_layers)
        for name, p in self.named_parameters():
            if p.is_meta:
                # Built on the meta device to be loaded into: there are no values to set,
                # and meta kernels for random init import torch._dynamo (~1.5 s per load).
                continue
            leaf = name.rsplit(".", 1)[-1]
            module = self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self
            if module.__class__.__name__ in ("LayerNorm", "RMSNorm"):
                # An RMSNorm with a weight offset (Gemma) scales by offset + weight.
                unit = 1.0 - getattr(module, "weight_offset", 0.0)
                nn.init.constant_(p, unit) if leaf == "weight" else nn.init.zeros_(p)
            elif leaf == "bias":
                nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(n_residual_writes))
            else:
                nn.init.normal_(p, 0.0, std)

    def _apply(self, fn: Any, recurse: bool = True) -> BaseTransformer:
        """After every ``.to()`` / ``.cuda()`` / ``.bfloat16()``: weights stored [in, out]
        for fast fp32 CPU decoding go back to row-major where that order is slow."""
        super()._apply(fn, recurse)
        undo_slow_layout(self)
        return self

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (RoPE tables, ALiBi slopes) on the weights' device.

        Needed after building on the meta device: loading assigns the parameters, but
        buffers that are not saved stay on meta until recomputed here.
        """
        device = self.device
        for module in self.modules():
            if module is not self and hasattr(module, "init_buffers"):
                module.init_buffers(device)

    # --- embedding step ----------------------------------------------------------------
    def _embed(
        self,
        tokens: Int[Tensor, "batch pos"],
        positions: Int[Tensor, "#batch pos"],
        token_type_ids: Int[Tensor, "batch pos"] | None,
        hook_embed: HookPoint,
        hook_pos_embed: HookPoint | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Token (+ position) (+ token type) embedding, optional norm, dropout."""
        x = self.embed(tokens)
        if self.cfg.embed_scale != 1.0:
            # Rounded to the model dtype first, as Gemma does (sqrt(2048) is 45.25 in bf16).
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype, device=x.device)
        x = hook_embed(x)
        if self.pos_embed is not None:
            assert hook_pos_embed is not None
            # Positions shared by the batch come as one row; hooks see [batch, pos, d].
            x = x + hook_pos_embed(self.pos_embed(positions).to(x.dtype).expand_as(x))
        if self.token_type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(tokens)
            x = x + self.token_type_embed(token_type_ids)
        elif token_type_ids is not None:
            raise LmscopeError(
                "token_type_ids were given but this model has no token type embeddings "
                "(n_token_types=0)."
            )
        x = self.ln_embed(x)
        return F.dropout(x, self.cfg.dropout, self.training) if self.cfg.dropout > 0 else x

    # --- introspection -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return next(self.parameters()).dtype

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        """Token embedding matrix."""
        return self.embed.weight

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied unembedding counted once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            parts = self.param_breakdown()
            total -= parts["embedding"] + parts["positional"]
        return total

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per component: embedding, positional, attention, mlp, norm, unembedding."""
        return stats.param_breakdown(self)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per token with `seq_len` (default max_seq_len) keys in context."""
        return stats.flops_per_token(self, seq_len or self.cfg.max_seq_len)

    def kv_cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """KV-cache bytes per generated token (keys and values of cached layers)."""
        element = torch.empty((), dtype=dtype or self.dtype).element_size()
        return 2 * self.cached_layers() * self.cfg.kv_heads * self.cfg.head_dim * element

    def cached_layers(self) -> int:
        """How many self-attention layers keep a KV cache during generation."""
        raise NotImplementedError

    def aux_loss(self) -> Tensor:
        """Weighted MoE load-balancing loss of the last forward (0 for dense models)."""
        losses = [
            m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None
        ]
        if not losses:
            return torch.zeros((), device=self.device)
        return self.cfg.router_aux_loss_coef * torch.stack(losses).sum()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Sample from the model: see `lmscope.generate.generate` (same arguments)."""
        # Generation is its own module (it reads the model, not the other way round).
        from lmscope.generate import generate

        return generate(self, *args, **kwargs)

    # --- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory `path`."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "config.json", self.cfg.to_dict())
        write_safetensors(
            self.state_dict(), directory / "model.safetensors", metadata={"format": "pt"}
        )
        return directory
