"""Feature statistics: streamed top-k equals brute force, samples, logit effects, search."""

from __future__ import annotations

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.sae import build_sae
from lmscope.sae.features import PAD, collect_features, logit_effects, search_features
from lmscope.tokenizers import CharTokenizer
from tests.sae.tiny import HOOK, tiny_model, token_stream

ROWS = token_stream(20 * 12, seed=5).reshape(20, 12)


def all_acts(model, sae, rows, hook=HOOK) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    with model.hooks([(hook, lambda x, h: seen.append(x))]), torch.no_grad():
        model(rows)
        return sae.encode(seen[0])  # [n, ctx, d_sae]


def test_top_contexts_equal_brute_force() -> None:
    model = tiny_model()
    sae = build_sae(d_in=32, d_sae=40, arch="jumprelu", hook_name=HOOK, seed=4)
    stats = collect_features(model, sae, ROWS, k=3, window=(12, 12), batch_size=3, n_samples=50)
    acts = all_acts(model, sae, ROWS)
    ctx_max = acts.max(1).values  # [n, d_sae]
    assert stats.n_tokens == ROWS.numel()
    torch.testing.assert_close(stats.density, (acts > 0).double().mean((0, 1)))
    checked = 0
    for f in range(sae.d_sae):
        # Contexts that start with the same token tie (position 0 sees only itself):
        # compare the top values, and that each example is a context with that value.
        values = ctx_max[:, f].sort(descending=True).values[:3]
        examples = stats.top_examples(f)
        torch.testing.assert_close(
            torch.tensor([e.max_act for e in examples]), values[values > 0], rtol=0, atol=0
        )
        assert len({e.context for e in examples}) == len(examples)
        for e in examples:
            assert e.max_act == pytest.approx(float(ctx_max[e.context, f]))
            assert e.position == int(acts[e.context, :, f].argmax())
            inside = [i for i, t in enumerate(e.tokens) if t != PAD]
            assert len(inside) == 12  # the window (12, 12) covers the whole context
            assert [e.tokens[i] for i in inside] == ROWS[e.context].tolist()
            torch.testing.assert_close(
                torch.tensor([e.acts[i] for i in inside]), acts[e.context, :, f]
            )
            assert e.tokens[e.peak] == ROWS[e.context, e.position]
            checked += 1
        # The reservoir is larger than the number of firing contexts: it holds them all.
        firing = {int(c) for c in (ctx_max[:, f] > 0).nonzero()[:, 0]}
        sampled = [e for _, _, bin_ in stats.quantile_samples(f, 4, 100) for e in bin_]
        assert {e.context for e in sampled} == firing
        lows = [low for low, _, _ in stats.quantile_samples(f)]
        assert lows == sorted(lows)
    assert checked > 40  # most features fire somewhere


def test_reservoir_is_a_bounded_sample_of_firing_contexts() -> None:
    model = tiny_model()
    sae = build_sae(d_in=32, d_sae=16, arch="standard", hook_name=HOOK, seed=4)
    stats = collect_features(model, sae, ROWS, features=[2, 9], n_samples=5, window=(2, 1))
    ctx_max = all_acts(model, sae, ROWS).max(1).values
    for f in (2, 9):
        sampled = [e for _, _, bin_ in stats.quantile_samples(f, 5, 1) for e in bin_]
        assert len(sampled) == min(5, int((ctx_max[:, f] > 0).sum()))
        for e in sampled:
            assert e.max_act == pytest.approx(float(ctx_max[e.context, f]))
            assert len(e.tokens) == 4
    assert stats.samples.tokens.shape == (2, 5, 4)  # memory: features x samples x window
    with pytest.raises(LmscopeError, match="feature 3 was not collected"):
        stats.top_examples(3)


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-tiny"])
def test_logit_effects_equal_a_dense_matmul(preset: str) -> None:
    model = tiny_model(preset)
    sae = build_sae(d_in=32, d_sae=24, arch="topk", k=4, hook_name=HOOK, seed=4)
    effects = logit_effects(model, sae, k=5, chunk=7)
    dense = (sae.W_dec * model.ln_final.weight) @ model.W_U
    assert not torch.allclose(model.ln_final.weight, torch.ones(32))  # the weight matters
    top = dense.topk(5, dim=1)
    torch.testing.assert_close(effects["promoted"], top.values.detach())
    assert torch.equal(effects["promoted_ids"], top.indices)
    low = dense.topk(5, dim=1, largest=False)
    torch.testing.assert_close(effects["suppressed"], low.values.detach())
    assert torch.equal(effects["suppressed_ids"], low.indices)


def embedding_detector(model, token: int):
    """An SAE on hook_embed whose feature 3 fires exactly on `token` (and others randomly)."""
    sae = build_sae(d_in=32, d_sae=8, arch="standard", hook_name="hook_embed", seed=1)
    W_E = model.embed.weight.detach()
    scores = W_E @ W_E[token]
    others = scores[torch.arange(61) != token].max()
    with torch.no_grad():
        sae.W_enc[:, 3] = W_E[token]
        sae.b_enc[3] = -(scores[token] + others) / 2
        sae.b_dec.zero_()
    return sae


def test_search_finds_the_feature_that_fires_on_a_token() -> None:
    model = tiny_model()
    tokenizer = CharTokenizer([chr(65 + i) for i in range(61)])
    target = int(ROWS[4, 5])
    sae = embedding_detector(model, target)
    stats = collect_features(model, sae, ROWS, k=4, window=(3, 1))
    acts = all_acts(model, sae, ROWS, "hook_embed")
    assert torch.equal(acts[..., 3] > 0, target == ROWS)  # precondition: fires on target only
    found = search_features(stats, tokenizer.decode([target]), tokenizer)
    assert found and found[0]["feature"] == 3 and found[0]["fraction"] == 1.0
    assert found[0]["mean_activation"] == pytest.approx(float(acts[..., 3][target == ROWS].mean()))
    assert all(m["feature"] != 3 for m in search_features(stats, (target + 1) % 61))
    with pytest.raises(LmscopeError, match="is 2 tokens"):
        search_features(stats, "AB", tokenizer)
