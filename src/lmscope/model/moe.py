"""Sparse mixture of experts (Shazeer et al., 2017; Switch, Fedus et al., 2021; Mixtral).

A router scores every expert for each token; the token goes to its top
``experts_per_token`` experts and the output is their weighted sum. Routing follows
Mixtral: softmax over all experts in float32, keep the top k, renormalise them to sum to
one (``moe_normalize_topk``).

Unbalanced routing starves experts, so training adds a load-balancing loss (Switch
Transformer, as Hugging Face computes it for Mixtral):

    aux = n_experts * sum_e (tokens routed to e / tokens) * (mean router prob of e)

which is ``experts_per_token`` at perfect balance. The loss of the last forward is kept
in ``aux_loss``; `Transformer.aux_loss()` sums it over layers and applies the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.hooks import HookPoint
from lmscope.model.mlp import MLP


def load_balancing_loss(
    probs: Float[Tensor, "tokens expert"], chosen: Int[Tensor, "tokens k"]
) -> Float[Tensor, ""]:
    """Switch-Transformer balance loss of one layer's routing (see module docstring)."""
    n_tokens, n_experts = probs.shape
    routed = F.one_hot(chosen, n_experts).sum(dim=1).float()  # [tokens, expert]
    fraction_routed = routed.sum(0) / n_tokens
    mean_prob = probs.mean(0)
    return n_experts * (fraction_routed * mean_prob).sum()


class MoE(nn.Module):
    """Top-k routed mixture of MLP experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.n_experts is not None
        self.n_experts = cfg.n_experts
        self.k = cfg.experts_per_token
        self.normalize = cfg.moe_normalize_topk
        self.router = nn.Linear(cfg.d_model, self.n_experts, bias=False)
        self.hook_router_logits = HookPoint()  # [batch, pos, expert]
        self.hook_expert_weights = HookPoint()  # [batch, pos, k]
        self.hook_expert_indices = HookPoint()  # [batch, pos, k]
        # Hooks inside each expert see only the tokens routed to it: [n_routed, d_mlp].
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(self.n_experts))
        self.aux_loss: Tensor | None = None

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        batch, n_pos, d_model = x.shape
        logits = self.hook_router_logits(self.router(x))
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = self.hook_expert_weights(weights.to(x.dtype))
        chosen = self.hook_expert_indices(chosen)
        self.aux_loss = load_balancing_loss(
            probs.reshape(-1, self.n_experts), chosen.reshape(-1, self.k)
        )

        flat_x = x.reshape(-1, d_model)
        flat_chosen = chosen.reshape(-1, self.k)
        flat_weights = weights.reshape(-1, self.k)
        out = torch.zeros_like(flat_x)
        for e, expert in enumerate(self.experts):
            # Every expert runs, even on zero tokens, so its hooks fire once per forward.
            token, slot = torch.where(flat_chosen == e)
            y = expert(flat_x[token]) * flat_weights[token, slot, None]
            out.index_add_(0, token, y)
        return out.view(batch, n_pos, d_model)
