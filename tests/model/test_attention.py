"""Attention: both execution paths, GQA/MQA equivalences, masks, scaling, cross attention."""

from __future__ import annotations

import math

import pytest
import torch

from lmscope import build_model
from lmscope.errors import LmscopeError
from lmscope.model import Attention
from lmscope.model.masking import build_context
from tests.conftest import small

HOOK_PATTERNS = [(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]

VARIANTS = {
    "gpt2": ("gpt2-small", {}),
    "llama-mha": ("llama-tiny", {}),
    "mistral-gqa-window": ("mistral-tiny", {}),
    "mqa": ("llama-tiny", {"n_kv_heads": 1}),
    "alibi": ("gpt2-small", {"positional": "alibi"}),
    "t5-bias-decoder": ("gpt2-small", {"positional": "t5-bias"}),
    "sinusoidal": ("gpt2-small", {"positional": "sinusoidal"}),
    "no-scale": ("llama-tiny", {"attention_scale": "none"}),
    "bert": ("bert-base", {}),
    "t5": ("t5-small", {}),
    "moe": ("mixtral-tiny", {}),
}


def _forward(model: torch.nn.Module, tokens: torch.Tensor, **kwargs: object) -> torch.Tensor:
    if model.cfg.architecture == "encoder-decoder":
        return model(tokens, tokens, **kwargs)
    return model(tokens, **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sdpa_path_equals_explicit_path(name: str) -> None:
    preset, overrides = VARIANTS[name]
    model = build_model(small(preset, **overrides)).eval()
    tokens = torch.randint(0, 61, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding on one row exercises the masked path
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            if model.cfg.architecture == "encoder-decoder" and kwargs:
                kwargs = {"decoder_attention_mask": mask}
            fused = _forward(model, tokens, **kwargs)
            with model.hooks(fwd_hooks=HOOK_PATTERNS):
                explicit = _forward(model, tokens, **kwargs)
            assert (fused - explicit).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["gpt2", "mistral-gqa-window", "alibi", "t5"])
def test_explicit_path_gradients_equal_sdpa_gradients(name: str) -> None:
    """The explicit path works in place on its scores: autograd must still be exact."""
    preset, overrides = VARIANTS[name]
    model = build_model(small(preset, **overrides)).eval()
    tokens = torch.randint(0, 61, (2, 10))

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        _forward(model, tokens).float().pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fused = grads()
    with model.hooks(fwd_hooks=HOOK_PATTERNS):
        explicit = grads()
    assert len(fused) == len(explicit) > 0
    for a, b in zip(fused, explicit, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cached_scores_are_masked_and_scaled_and_pattern_is_their_softmax() -> None:
    model = build_model(small("gpt2-small")).eval()
    tokens = torch.randint(0, 61, (2, 7))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "blocks.0.attn" in n)
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = cache["blocks.0.attn.hook_attn_scores"]
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(scores[..., causal], raw[..., causal], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(scores[..., ~causal]).all()
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], scores.softmax(-1))


def test_explicit_path_is_taken_only_when_needed() -> None:
    model = build_model(small("gpt2-small")).eval()
    attn = model.blocks[0].attn
    assert not attn.needs_pattern
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", lambda x, h: None)]):
        assert attn.needs_pattern
        assert not model.blocks[1].attn.needs_pattern
    assert not attn.needs_pattern
    explicit = build_model(small("gpt2-small", attn_impl="explicit"))
    assert explicit.blocks[0].attn.needs_pattern


def test_sdpa_only_config_refuses_pattern_hooks_with_a_clear_message() -> None:
    model = build_model(small("gpt2-small", attn_impl="sdpa")).eval()
    with (
        pytest.raises(LmscopeError, match="attn_impl='sdpa' never materialises"),
        model.hooks(fwd_hooks=HOOK_PATTERNS),
    ):
        model(torch.randint(0, 61, (1, 4)))


def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha() -> None:
    mha = build_model(small("llama-tiny")).eval()
    gqa = build_model(small("llama-tiny", n_kv_heads=4)).eval()
    assert gqa.cfg.n_kv_heads == gqa.cfg.n_heads == mha.cfg.n_heads
    gqa.load_state_dict(mha.state_dict())
    tokens = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert torch.equal(gqa(tokens), mha(tokens))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_equals_mha_with_key_value_heads_repeated_per_group(n_kv_heads: int) -> None:
    gqa = build_model(small("llama-tiny", n_kv_heads=n_kv_heads)).eval()
    mha = build_model(small("llama-tiny", n_kv_heads=4)).eval()
    state = gqa.state_dict()
    group = 4 // n_kv_heads
    d, dh = gqa.cfg.d_model, gqa.cfg.head_dim
    for key in [k for k in state if k.endswith("attn.qkv.weight")]:
        w = state[key]
        q, k, v = w.split([4 * dh, n_kv_heads * dh, n_kv_heads * dh])
        k = k.view(n_kv_heads, dh, d).repeat_interleave(group, 0).reshape(-1, d)
        v = v.view(n_kv_heads, dh, d).repeat_interleave(group, 0).reshape(-1, d)
        state[key] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    tokens = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(gqa(tokens), mha(tokens), atol=1e-5, rtol=0)


def test_gqa_hooks_keep_only_the_kv_heads() -> None:
    model = build_model(small("mistral-tiny")).eval()
    seen: dict[str, tuple[int, ...]] = {}

    def grab_shape(x: torch.Tensor, hook: object) -> None:
        seen[hook.name] = tuple(x.shape)  # type: ignore[attr-defined]

    grab = [(f"blocks.0.attn.hook_{n}", grab_shape) for n in "qkv"]
    with torch.no_grad():
        model.run_with_hooks(torch.randint(0, 61, (2, 7)), fwd_hooks=grab)
    assert seen["blocks.0.attn.hook_q"] == (2, 7, 4, 8)
    assert seen["blocks.0.attn.hook_k"] == seen["blocks.0.attn.hook_v"] == (2, 7, 2, 8)


def _pattern(model: torch.nn.Module, tokens: torch.Tensor, **kwargs: object) -> torch.Tensor:
    out: list[torch.Tensor] = []
    with torch.no_grad():
        model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, h: out.append(x))], **kwargs
        )
    return out[0]


def test_sliding_window_limits_each_query_to_the_last_window_keys() -> None:
    model = build_model(small("mistral-tiny", sliding_window=3)).eval()
    pattern = _pattern(model, torch.randint(0, 61, (1, 8)))
    visible = pattern[0, 0] > 0
    for i in range(8):
        assert visible[i].nonzero().flatten().tolist() == list(range(max(0, i - 2), i + 1))


def test_padding_keys_get_no_attention_and_rows_still_sum_to_one() -> None:
    model = build_model(small("gpt2-small")).eval()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pattern = _pattern(model, torch.randint(0, 61, (2, 5)), attention_mask=mask)
    assert pattern[0, :, 2:, :2].abs().max() == 0
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 5))
    assert torch.isfinite(pattern).all()


def test_bidirectional_encoder_pattern_is_dense() -> None:
    model = build_model(small("bert-base")).eval()
    pattern = _pattern(model, torch.randint(0, 61, (1, 6)))
    assert (pattern > 0).all()


@pytest.mark.parametrize(
    ("scale", "expected"), [(None, 1 / math.sqrt(8)), ("none", 1.0), (0.5, 0.5)]
)
def test_attention_scale_multiplies_qk(scale: object, expected: float) -> None:
    model = build_model(small("gpt2-small", attention_scale=scale)).eval()
    grabbed: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: object) -> None:
        grabbed[hook.name.rsplit(".", 1)[-1]] = x  # type: ignore[attr-defined]

    names = ["hook_q", "hook_k", "hook_attn_scores"]
    with torch.no_grad():
        model.run_with_hooks(
            torch.randint(0, 61, (1, 4)),
            fwd_hooks=[(f"blocks.0.attn.{n}", keep) for n in names],
        )
    q, k = grabbed["hook_q"][0, :, 0], grabbed["hook_k"][0, :, 0]  # head 0: [pos, d_head]
    raw = q @ k.T
    scores = grabbed["hook_attn_scores"][0, 0]
    torch.testing.assert_close(scores.tril(), (raw * expected).tril())
    upper = torch.ones(4, 4, dtype=torch.bool).triu(1)
    assert torch.isinf(scores[upper]).all()


def test_cross_attention_reads_keys_from_the_source() -> None:
    cfg = small("t5-small")
    attn = Attention(cfg, layer=0, cross=True).eval()
    x, source = torch.randn(2, 3, cfg.d_model), torch.randn(2, 7, cfg.d_model)
    pos = torch.arange(3)[None]
    ctx = build_context(q_pos=pos, k_pos=torch.arange(7)[None], k_valid=None, causal=False)
    out = attn(x, ctx, source=source)
    assert out.shape == (2, 3, cfg.d_model)
    # Changing the source changes the output; the queries' own content is only a query.
    assert not torch.allclose(attn(x, ctx, source=source + 1), out)
    with pytest.raises(LmscopeError, match="encoder output"):
        attn(x, ctx)


def test_per_head_weight_views_share_storage_with_the_fused_projection() -> None:
    attn = Attention(small("mistral-tiny"), layer=0)
    assert attn.W_Q.shape == (4, 32, 8)
    assert attn.W_K.shape == attn.W_V.shape == (2, 32, 8)
    assert attn.W_O.shape == (4, 8, 32)
    with torch.no_grad():
        attn.W_K[1, 3, 5] = 42.0
        attn.W_O[2, 1, 7] = -7.0
    assert attn.qkv.weight[32 + 8 + 5, 3] == 42.0  # key head 1, dim 5, input 3
    assert attn.out.weight[7, 2 * 8 + 1] == -7.0


def test_scores_take_one_matmul_unless_the_mask_differs_per_row_or_head() -> None:
    """Scale and a shared mask ride on the GEMM (baddbmm); per-row masks and relative
    positions take the general path. Both give the same scores (see the tests above)."""
    attn = build_model(small("gpt2-small")).blocks[0].attn
    q, k = (
        torch.randn(2, attn.n_heads, 5, attn.d_head),
        torch.randn(2, attn.n_heads, 5, attn.d_head),
    )
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    fast = attn._scores_in_one_matmul(q, k, causal)
    assert fast is not None and torch.isneginf(fast[..., ~causal[0, 0]]).all()
    expected = (q @ k.mT * attn.scale).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(fast, expected)
    no_mask = attn._scores_in_one_matmul(q, k, None)
    torch.testing.assert_close(no_mask, q @ k.mT * attn.scale)
    assert attn._scores_in_one_matmul(q, k, causal.expand(2, 1, 5, 5)) is None  # padding
