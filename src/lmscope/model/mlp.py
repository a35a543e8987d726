"""The MLP: a key-value memory applied to each position (Geva et al., 2021).

``fc_in`` holds one *key* per neuron (a row): the neuron's pre-activation is how well
the residual stream matches it. ``fc_out`` holds one *value* per neuron (a column),
which the neuron writes to the residual stream in proportion to its activation:

    mlp(x) = sum_i act(x . key_i + b_in_i) * value_i + b_out

Gated variants (GLU family, Shazeer 2020) multiply the activated gate by a second
linear map: ``post = act(x W_gate) * (x W_in)``. The two input maps are one fused
matrix (one matmul), gate rows first. Hook names follow TransformerLens: ``hook_pre``
is the gate's pre-activation, ``hook_pre_linear`` the linear branch, ``hook_post`` the
product.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.hooks import HookPoint

#: Non-linearity of each activation name (for gated names: of the gate).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    # GPT-2's "gelu_new": the tanh approximation, as one fused kernel.
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": partial(F.gelu, approximate="tanh"),
    "reglu": F.relu,
}


class MLP(nn.Module):
    """Position-wise feed-forward network, dense or gated."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_mlp = cfg.mlp_dim
        self.gated = cfg.is_gated
        self.act = ACTIVATIONS[cfg.activation]
        n_in = 2 * self.d_mlp if self.gated else self.d_mlp
        self.fc_in = nn.Linear(cfg.d_model, n_in, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        if self.gated:
            self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]
        self.fc_out = nn.Linear(self.d_mlp, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        h = self.fc_in(x)
        if self.gated:
            gate, linear = h.split(self.d_mlp, dim=-1)
            post = self.act(self.hook_pre(gate)) * self.hook_pre_linear(linear)
        else:
            post = self.act(self.hook_pre(h))
        return self.fc_out(self.hook_post(post))

    # --- TransformerLens-style views (share storage) ----------------------------------
    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        """Key vectors as columns (the linear branch for gated MLPs)."""
        return self.fc_in.weight[-self.d_mlp :].T

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"] | None:
        """Gate weights of a gated MLP, else None."""
        return self.fc_in.weight[: self.d_mlp].T if self.gated else None

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        """Value vectors as rows: neuron i writes ``post_i * W_out[i]``."""
        return self.fc_out.weight.T

    def neuron_contributions(
        self, post: Float[Tensor, "*batch d_mlp"]
    ) -> Float[Tensor, "*batch d_mlp d_model"]:
        """What each neuron writes: ``post_i * value_i``. Sums (plus ``b_out``) to the output."""
        return post.unsqueeze(-1) * self.W_out
