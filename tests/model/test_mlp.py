"""MLPs: dense and gated formulas, key-value decomposition (worked example E7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscope.model import MLP
from tests.conftest import small

GATES = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "reglu": F.relu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
DENSE = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@pytest.mark.parametrize("activation", list(DENSE))
def test_dense_mlp_is_act_x_w_in_plus_b_then_w_out(activation: str) -> None:
    mlp = MLP(small("gpt2-small", activation=activation))
    for p in mlp.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(3, 32)
    expected = DENSE[activation](x @ mlp.W_in + mlp.fc_in.bias) @ mlp.W_out + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("activation", list(GATES))
def test_gated_mlp_multiplies_activated_gate_by_linear_branch(activation: str) -> None:
    mlp = MLP(small("llama-tiny", activation=activation))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 32)
    assert mlp.W_gate is not None
    expected = (GATES[activation](x @ mlp.W_gate) * (x @ mlp.W_in)) @ mlp.W_out
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_gelu_tanh_is_gpt2s_gelu_new_formula() -> None:
    x = torch.linspace(-6, 6, 101)
    gelu_new = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    mlp = MLP(small("gpt2-small", activation="gelu_tanh"))
    torch.testing.assert_close(mlp.act(x), gelu_new, atol=1e-6, rtol=0)


def test_neuron_contributions_sum_to_the_mlp_output() -> None:
    mlp = MLP(small("gpt2-small"))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.2)  # outputs of order 1, as in a trained model
    x = torch.randn(2, 5, 32)
    post: list[torch.Tensor] = []
    mlp.hook_post.add_hook(lambda a, h: post.append(a))
    out = mlp(x)
    parts = mlp.neuron_contributions(post[0])
    assert parts.shape == (2, 5, mlp.d_mlp, 32)
    torch.testing.assert_close(parts.sum(-2) + mlp.fc_out.bias, out, atol=1e-5, rtol=0)


def test_key_value_memory_worked_example_e7() -> None:
    mlp = MLP(small("gpt2-small", d_model=4, n_heads=1, d_mlp=2, activation="relu", mlp_bias=False))
    with torch.no_grad():
        mlp.fc_in.weight.copy_(torch.tensor([[0.8, 0.1, 0.9, -0.1], [0.1, 0.8, -0.2, 0.3]]))
        mlp.fc_out.weight.zero_()
        # Output dims 0, 1, 2 stand for the document's dims 42, 73 and 158.
        mlp.fc_out.weight[:3] = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.6, 0.05]])
    pre: list[torch.Tensor] = []
    mlp.hook_pre.add_hook(lambda a, h: pre.append(a))
    mlp(torch.tensor([0.7, 0.4, 0.5, 0.2]))
    torch.testing.assert_close(pre[0], torch.tensor([1.03, 0.35]), atol=1e-6, rtol=0)
    mlp.hook_post.add_hook(lambda a, h: torch.tensor([1.2, 0.4]))  # the document's activations
    out = mlp(torch.tensor([0.7, 0.4, 0.5, 0.2]))
    torch.testing.assert_close(out[:3], torch.tensor([1.12, 1.24, 0.74]), atol=1e-6, rtol=0)
