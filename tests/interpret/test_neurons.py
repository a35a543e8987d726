"""Neurons as key-value memories: E7 by hand, exact sums, top-k = brute force, errors."""

from __future__ import annotations

import pytest
import torch

from lmscope import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.interpret.neurons import (
    neuron_contributions,
    neuron_key_tokens,
    neuron_value_tokens,
    top_activating_contexts,
    top_contexts_of_neurons,
)
from lmscope.model import build_model
from tests.conftest import small
from tests.interpret.induction_model import induction_model

# Worked example E7: the residual stream of "Tower" (four dims shown), two neurons.
X = [0.7, 0.4, 0.5, 0.2]
KEYS = [[0.8, 0.1, 0.9, -0.1], [0.1, 0.8, -0.2, 0.3]]  # k_2847, k_5432
VALUES = [[0.9, 0.8, 0.6, 0.0], [0.1, 0.7, 0.05, 0.0]]  # v over output dims 42, 73, 158


@torch.no_grad()
def e7_model():
    """One block whose MLP holds E7's two neurons; token 0 embeds as "Tower"'s stream.

    The document's activations (1.2, 0.4) include dims it elides; the input bias
    (0.17, 0.05) stands for them, on top of the shown dims' 1.03 and 0.35.
    """
    cfg = ModelConfig(
        vocab_size=4, d_model=4, n_layers=1, n_heads=1, d_mlp=2, max_seq_len=4,
        positional="none", norm="none", activation="relu", tie_embeddings=False,
        qkv_bias=False, attn_out_bias=False,
    )  # fmt: skip
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.zero_()
    model.embed.weight[0] = torch.tensor(X)
    mlp = model.blocks[0].mlp
    mlp.W_in.copy_(torch.tensor(KEYS).T)
    mlp.fc_in.bias.copy_(torch.tensor([0.17, 0.05]))
    mlp.W_out.copy_(torch.tensor(VALUES))
    model.unembed.weight.copy_(torch.eye(4))  # token j reads output dim j
    return model


def test_e7_keys_values_and_the_mlp_output():
    model = e7_model()
    key0 = neuron_key_tokens(model, 0, 0, k=4)
    key1 = neuron_key_tokens(model, 0, 1, k=4)
    assert dict((i, s) for i, _, s in key0.top)[0] == pytest.approx(1.03)
    assert dict((i, s) for i, _, s in key1.top)[0] == pytest.approx(0.35)

    tokens = torch.tensor([[0]])
    writes = neuron_contributions(model, tokens, 0)  # [1, 1, 2, 4]
    torch.testing.assert_close(writes[0, 0, 0], 1.2 * torch.tensor(VALUES[0]))
    torch.testing.assert_close(writes[0, 0].sum(0), torch.tensor([1.12, 1.24, 0.74, 0.0]))
    along_73 = neuron_contributions(model, tokens, 0, direction=torch.tensor([0.0, 1.0, 0, 0]))
    torch.testing.assert_close(along_73[0, 0], torch.tensor([1.2 * 0.8, 0.4 * 0.7]))

    value = neuron_value_tokens(model, 0, 0, k=3)
    assert [(i, round(s, 6)) for i, _, s in value.top] == [(0, 0.9), (1, 0.8), (2, 0.6)]
    assert value.bottom[0][0] == 3 and value.kind == "value"


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-tiny"])  # GELU + biases; SwiGLU
def test_neuron_writes_plus_b_out_sum_to_the_mlp_output(preset):
    model = build_model(small(preset, mlp_bias=True), seed=0).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.fc_out.bias.normal_()
    tokens = torch.randint(0, 61, (2, 7))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "mlp" in n)
    for layer in range(2):
        writes = neuron_contributions(cache, None, layer)
        total = writes.sum(2) + model.blocks[layer].mlp.fc_out.bias
        torch.testing.assert_close(total, cache["mlp_out", layer], atol=1e-5, rtol=0)
        direction = torch.randn(32)
        projected = neuron_contributions(model, tokens, layer, direction=direction)
        torch.testing.assert_close(projected, writes @ direction, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-tiny"])  # LayerNorm; gated RMSNorm
def test_value_and_key_tokens_equal_dense_matmuls(preset):
    model = build_model(small(preset), seed=0).eval()
    with torch.no_grad():
        model.ln_final.weight.uniform_(0.5, 1.5)
        model.blocks[1].ln2.weight.uniform_(0.5, 1.5)
    mlp = model.blocks[1].mlp
    raw = (mlp.W_out @ model.W_U).detach()  # [d_mlp, vocab]
    got = neuron_value_tokens(model, 1, 7, k=5, through_norm=False)
    top = raw[7].topk(5)
    assert [i for i, _, _ in got.top] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([s for *_, s in got.top]), top.values)
    assert [i for i, _, _ in got.bottom] == raw[7].topk(5, largest=False).indices.tolist()

    value = mlp.W_out[7].detach()
    if preset == "gpt2-small":  # LayerNorm removes the mean before weighting
        value = value - value.mean()
    expected = (value * model.ln_final.weight.detach()) @ model.W_U.detach()
    normed = neuron_value_tokens(model, 1, 7, k=5)
    torch.testing.assert_close(torch.tensor([s for *_, s in normed.top]), expected.topk(5).values)

    key = (mlp.W_gate if mlp.gated else mlp.W_in)[:, 7].detach()
    if preset == "gpt2-small":
        key = key - key.mean()
    key_scores = model.W_E.detach() @ (key * model.blocks[1].ln2.weight.detach())
    keys = neuron_key_tokens(model, 1, 7, k=5)
    torch.testing.assert_close(torch.tensor([s for *_, s in keys.top]), key_scores.topk(5).values)


def _brute_force(model, batches, layer, neuron, k):
    name = f"blocks.{layer}.mlp.hook_post"
    acts = torch.cat([model.run_with_cache(b, names_filter=name)[1][name] for b in batches])
    flat = acts[..., neuron].flatten()
    values, order = flat.sort(descending=True, stable=True)
    n_pos = acts.shape[1]
    return [
        (int(i) // n_pos, int(i) % n_pos, float(v))
        for v, i in zip(values[:k], order[:k], strict=True)
    ]


@pytest.mark.parametrize("activation", ["gelu", "relu"])  # relu: ties at zero, by order
def test_top_contexts_equal_brute_force_over_every_activation(activation):
    model = build_model(small("gpt2-small", activation=activation), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 61, (3, 10), generator=gen) for _ in range(4)]
    neurons = [0, 5, 47]
    found = top_contexts_of_neurons(model, None, batches, 1, neurons, k=20, window=(3, 2))
    every = torch.cat(batches)
    for neuron in neurons:
        expected = _brute_force(model, batches, 1, neuron, 20)
        got = [(c.sequence, c.position, c.activation) for c in found[neuron]]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], abs=1e-6)
        for c in found[neuron]:
            lo = max(0, c.position - 3)
            assert c.tokens == every[c.sequence, lo : c.position + 3].tolist()
            assert c.tokens[c.index] == every[c.sequence, c.position]
            assert c.activations[c.index] == pytest.approx(c.activation)
    single = top_activating_contexts(model, None, batches, 1, 5, k=3, window=(3, 2))
    assert single == found[5][:3]


class ToyTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join("\n" if i == 0 else chr(96 + i % 26) for i in ids)


def test_contexts_highlight_the_token_in_text_and_markup():
    model = build_model(small("gpt2-small"), seed=0).eval()
    batch = torch.tensor([[1, 2, 3, 4, 0, 5, 6]])
    (ctx,) = top_activating_contexts(model, ToyTokenizer(), [batch], 0, 3, k=1, window=(2, 1))
    letters = ["a", "b", "c", "d", "⏎", "e", "f"]
    p = ctx.position
    assert ctx.token == letters[p]
    assert ctx.highlighted == "".join(letters[max(0, p - 2) : p]) + f"[[{letters[p]}]]" + "".join(
        letters[p + 1 : p + 2]
    )
    assert "[bold reverse]" in ctx.markup and ctx.to_dict()["highlighted"] == ctx.highlighted
    plain = top_activating_contexts(model, None, [batch], 0, 3, k=1, window=(1, 1))[0]
    assert plain.highlighted.count("[[") == 1 and " " in plain.text  # ids joined by spaces


def test_bad_indices_and_models_are_refused_clearly():
    model = build_model(small("gpt2-small"), seed=0).eval()
    batch = [torch.zeros(1, 3, dtype=torch.long)]
    with pytest.raises(LmscopeError, match=r"layer 5 does not exist: this model has layers 0\.\.1"):
        neuron_value_tokens(model, 5, 0)
    d_mlp = model.cfg.mlp_dim
    with pytest.raises(LmscopeError, match=rf"neuron {d_mlp} does not exist: .* 0\.\.{d_mlp - 1}"):
        neuron_value_tokens(model, 0, d_mlp)
    with pytest.raises(LmscopeError, match=rf"neuron {-d_mlp - 1} does not exist"):
        top_activating_contexts(model, None, batch, 0, -d_mlp - 1)
    with pytest.raises(LmscopeError, match="k must be >= 1"):
        top_activating_contexts(model, None, batch, 0, 1, k=0)
    with pytest.raises(LmscopeError, match=r"direction must be a \[d_model\]"):
        neuron_contributions(model, batch[0], 0, direction=torch.ones(3))
    with pytest.raises(LmscopeError, match="no MLP"):
        neuron_value_tokens(induction_model(), 0, 0)
    moe = build_model(small("gpt2-small", n_experts=2), seed=0)
    with pytest.raises(LmscopeError, match="mixture of experts"):
        neuron_key_tokens(moe, 0, 0)
    with pytest.raises(LmscopeError, match="branch"):
        neuron_key_tokens(model, 0, 0, branch="up")
