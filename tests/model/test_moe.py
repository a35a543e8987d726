"""Mixture of experts: routing, equivalence with a dense MLP, load-balancing loss."""

from __future__ import annotations

import torch

from lmscope import build_model
from lmscope.model import MLP, MoE
from lmscope.model.moe import load_balancing_loss
from tests.conftest import small


def test_moe_with_one_expert_equals_the_dense_mlp() -> None:
    moe = MoE(small("mixtral-tiny", n_experts=1, experts_per_token=1))
    dense = MLP(small("llama-tiny"))
    dense.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(2, 6, 32)
    assert torch.equal(moe(x), dense(x))


def test_moe_output_is_the_renormalised_top_k_mixture_of_experts() -> None:
    moe = MoE(small("mixtral-tiny", n_experts=4, experts_per_token=2))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(1, 5, 32)
    probs = (x @ moe.router.weight.T).softmax(-1)
    top = probs.topk(2, dim=-1)
    weights = top.values / top.values.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for t in range(5):
        for slot in range(2):
            e = int(top.indices[0, t, slot])
            expected[0, t] += weights[0, t, slot] * moe.experts[e](x[0, t])
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)


def test_without_renormalisation_weights_are_the_raw_router_probabilities() -> None:
    moe = MoE(small("mixtral-tiny", n_experts=4, experts_per_token=1, moe_normalize_topk=False))
    torch.nn.init.normal_(moe.router.weight, std=1.0)
    weights: list[torch.Tensor] = []
    moe.hook_expert_weights.add_hook(lambda w, h: weights.append(w))
    x = torch.randn(1, 3, 32)
    moe(x)
    expected = (x @ moe.router.weight.T).softmax(-1).max(-1).values
    torch.testing.assert_close(weights[0][..., 0], expected)


def test_load_balancing_loss_is_k_at_perfect_balance_and_larger_when_skewed() -> None:
    n_tokens, n_experts = 8, 4
    uniform = torch.full((n_tokens, n_experts), 1 / n_experts)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    assert torch.isclose(load_balancing_loss(uniform, balanced), torch.tensor(2.0))
    skewed_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * n_tokens)
    skewed = torch.tensor([[0, 1]] * n_tokens)
    assert load_balancing_loss(skewed_probs, skewed) > 2.0


def test_model_aux_loss_sums_layers_and_applies_the_coefficient() -> None:
    model = build_model(small("mixtral-tiny", router_aux_loss_coef=0.5))
    model(torch.randint(0, 61, (2, 7)))
    per_layer = [b.mlp.aux_loss for b in model.blocks]
    torch.testing.assert_close(model.aux_loss(), 0.5 * sum(per_layer))
    model.aux_loss().backward()
    assert model.blocks[0].mlp.router.weight.grad is not None  # it trains the router
    dense = build_model(small("llama-tiny"))
    dense(torch.randint(0, 61, (1, 3)))
    assert dense.aux_loss().item() == 0.0


def test_every_expert_runs_once_per_forward_even_with_no_tokens() -> None:
    moe = MoE(small("mixtral-tiny", n_experts=4, experts_per_token=1))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2] = 10.0  # with positive inputs every token picks expert 2
    calls: list[tuple[int, int]] = []
    for e, expert in enumerate(moe.experts):
        expert.hook_post.add_hook(lambda a, h, e=e: calls.append((e, a.shape[0])))
    moe(torch.rand(1, 5, 32) + 0.1)
    assert sorted(calls) == [(0, 0), (1, 0), (2, 5), (3, 0)]
