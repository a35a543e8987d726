"""Token embedding and unembedding (the LM head), tied or untied.

With tying (Press & Wolf, 2017; GPT-2), the unembedding is the transpose of the
embedding: ``logits = h @ W_E^T``. It is one parameter, stored and counted once; the
`Unembed` module then holds no weight and is handed the embedding's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.model.mlp import ACTIVATIONS
from lmscope.model.norm import make_norm


class TokenEmbedding(nn.Module):
    """Lookup of one learned vector per token id (``W_E: [vocab, d_model]``)."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, d_model))

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        """TransformerLens name for the embedding matrix."""
        return self.weight

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        vocab = self.weight.shape[0]
        # A clear error beats a CUDA device-side assert, but reading min/max back is a
        # host sync that would split a compiled graph: compiled code skips the check.
        checked = tokens.numel() and not torch.compiler.is_compiling()
        if checked and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            bad = tokens[(tokens < 0) | (tokens >= vocab)][0].item()
            raise LmscopeError(f"token id {bad} is outside this model's vocabulary [0, {vocab}).")
        return F.embedding(tokens, self.weight)


class Unembed(nn.Module):
    """Map the final residual stream to logits over the vocabulary."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tied = cfg.tie_embeddings
        self.d_model, self.vocab_size = cfg.d_model, cfg.vocab_size
        self.weight = None if self.tied else nn.Parameter(torch.zeros(cfg.vocab_size, cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.unembed_bias else None
        # T5 with a tied head rescales the final state by d_model^-0.5 before the head.
        self.scale = cfg.unembed_scale

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], embed_weight: Tensor
    ) -> Float[Tensor, "batch pos vocab"]:
        weight = embed_weight if self.weight is None else self.weight
        if self.scale != 1.0:
            x = x * self.scale
        return linear_padded_rows(x, weight, self.bias)


#: Fewest rows for which `linear_padded_rows` pads (1.4x at 256 rows, none at 1-16 here).
PADDED_MIN_ROWS = 64


def linear_padded_rows(
    x: Float[Tensor, "*batch d_in"], weight: Float[Tensor, "d_out d_in"], bias: Tensor | None
) -> Float[Tensor, "*batch d_out"]:
    """``F.linear``, faster for output widths such as GPT-2's 50257; same numbers.

    BLAS writes each output row at a multiple of the row stride. With an odd width
    (50257 floats) rows start at unaligned addresses and the vocabulary projection,
    the largest matmul of a small model, runs 1.25-1.7x slower on CPU (BENCHMARKS.md).
    Outside autograd and autocast we let it write into a buffer whose rows are padded
    to 16 floats and return the ``[..., :d_out]`` view: bit-identical values, a row
    stride that is not ``d_out`` (``is_contiguous()`` is False; ``.view(-1, d_out)``
    still works). Under autocast, ``out=`` calls would silently stay in full precision,
    so autocast takes ``F.linear`` like everything else. Below `PADDED_MIN_ROWS` rows
    (decoding) the padding gains nothing with [in, out]-stored weights (model/layout.py)
    and MKL may then pick another kernel for the two strides, so those stay plain.
    """
    d_out = weight.shape[0]
    padded = -(-d_out // 16) * 16
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    plain = needs_grad or x.device.type != "cpu" or torch.is_autocast_enabled(x.device.type)
    few_rows = x.numel() < PADDED_MIN_ROWS * x.shape[-1]
    if padded == d_out or plain or few_rows:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = flat.new_empty(flat.shape[0], padded)[:, :d_out]
    if bias is None:
        torch.mm(flat, weight.t(), out=out)
    else:
        torch.addmm(bias, flat, weight.t(), out=out)
    return out.view(*x.shape[:-1], d_out)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense, activation, norm, then the (tied) unembedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.ln = make_norm(cfg)
        self.unembed = Unembed(cfg)
        if self.unembed.bias is None:  # BERT's decoder always has a vocab bias
            self.unembed.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], embed_weight: Tensor
    ) -> Float[Tensor, "batch pos vocab"]:
        return self.unembed(self.ln(self.act(self.dense(x))), embed_weight)


def make_token_type_embedding(cfg: ModelConfig) -> nn.Embedding | None:
    """BERT's segment embedding (``n_token_types`` rows), or None when the config has none.

    Its values are set by the model's ``init_weights`` (or by loading): passing an empty
    ``_weight`` skips nn.Embedding's own random init, which on the meta device (building
    a model to load into) would import torch._dynamo for nothing.
    """
    if not cfg.n_token_types:
        return None
    return nn.Embedding(
        cfg.n_token_types, cfg.d_model, _weight=torch.empty(cfg.n_token_types, cfg.d_model)
    )
