"""run_with_cache and ActivationCache: lookups, what is stored, stopping early, gradients."""

from __future__ import annotations

import pytest
import torch

from lmscope import LmscopeError, build_model
from lmscope.cache import ActivationCache, CacheKeyError, get_act_name
from lmscope.hooks import HookError, HookPoint
from tests.conftest import small

B, T = 2, 7


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(small("gpt2-small")).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(1))


# --- names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("attn", 3), "blocks.3.attn.hook_pattern"),
        (("attn_logits", 1), "blocks.1.attn.hook_attn_scores"),
        (("resid_pre", 0), "blocks.0.hook_resid_pre"),
        (("resid_mid", 2), "blocks.2.hook_resid_mid"),
        (("attn_out", 2), "blocks.2.hook_attn_out"),
        (("mlp_out", 2), "blocks.2.hook_mlp_out"),
        (("q", 1), "blocks.1.attn.hook_q"),
        (("key", 1), "blocks.1.attn.hook_k"),
        (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
        (("z", 0, "a"), "blocks.0.attn.hook_z"),
        (("result", 0), "blocks.0.attn.hook_result"),
        (("pre", 5), "blocks.5.mlp.hook_pre"),
        (("mlp_post", 5), "blocks.5.mlp.hook_post"),
        (("pre_linear", 5), "blocks.5.mlp.hook_pre_linear"),
        (("scale", 2, "ln1"), "blocks.2.ln1.hook_scale"),
        (("normalized", 27, "ln2"), "blocks.27.ln2.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("embed",), "hook_embed"),
        (("pos_embed",), "hook_pos_embed"),
        (("k6",), "blocks.6.attn.hook_k"),
        (("scale4ln1",), "blocks.4.ln1.hook_scale"),
        (("blocks.1.hook_resid_post",), "blocks.1.hook_resid_post"),
    ],
)
def test_get_act_name_follows_transformer_lens(args: tuple, name: str) -> None:
    assert get_act_name(*args) == name


def test_lookups_short_tuple_negative_and_full(gpt2, tokens) -> None:
    _, cache = gpt2.run_with_cache(tokens)
    n = gpt2.cfg.n_layers
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache[f"blocks.{n - 1}.hook_resid_post"]
    assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert ("pattern", -1) in cache and "hook_embed" in cache and ("pattern", 9) not in cache
    assert cache["pattern", 0].shape == (B, gpt2.cfg.n_heads, T, T)
    assert cache["scale", 0, "ln1"].shape == (B, T, 1)
    # Every hook of the forward pass except the opt-in per-head results.
    expected = [name for name in gpt2.hook_names() if not name.endswith("hook_result")]
    assert list(cache.keys()) == expected
    assert len(cache) == len(expected) and dict(cache.items()).keys() == set(expected)


def test_unknown_and_uncached_names_say_what_to_do(gpt2, tokens) -> None:
    _, cache = gpt2.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(CacheKeyError, match=r"Did you mean 'blocks\.0\.attn\.hook_pattern'"):
        cache["patern", 0]
    with pytest.raises(KeyError, match="hook of this model but it was not cached"):
        cache["pattern", 0]
    with pytest.raises(CacheKeyError, match="tuple"):
        cache[3]  # type: ignore[index]
    with pytest.raises(HookError, match="Did you mean"):
        gpt2.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", "blocks.0.hook_z"])
    with pytest.raises(HookError, match="selected none"):
        gpt2.run_with_cache(tokens, names_filter=lambda name: "nothing" in name)


# --- what is run and stored -------------------------------------------------------------
def test_output_equals_plain_forward_and_cached_values_match_hooks(gpt2, tokens) -> None:
    seen: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, hook: HookPoint) -> None:
        seen[hook.name] = x.clone()

    with torch.no_grad(), gpt2.hooks(fwd_hooks=[(lambda _: True, record)]):
        gpt2(tokens)
    out, cache = gpt2.run_with_cache(tokens, names_filter=lambda _: True)
    torch.testing.assert_close(out, gpt2(tokens), rtol=0, atol=1e-5)
    assert set(cache) == set(seen)
    for name, value in seen.items():
        torch.testing.assert_close(cache[name], value, rtol=0, atol=1e-6)
    assert not any(p.active for p in gpt2.hook_points().values())


def test_names_filter_stores_only_what_was_asked(gpt2, tokens) -> None:
    _, one = gpt2.run_with_cache(tokens, names_filter="blocks.1.attn.hook_q")
    assert list(one) == ["blocks.1.attn.hook_q"]
    q = one["q", 1]
    # hook_q is a slice of the fused qkv output: the cache holds a copy of q alone.
    assert q.untyped_storage().nbytes() == q.numel() * q.element_size()
    assert one.nbytes() == q.numel() * q.element_size()
    # Cached together, q, k and v are the whole fused buffer: kept as views, no copies.
    qkv = [f"blocks.1.attn.hook_{x}" for x in "qkv"]
    _, together = gpt2.run_with_cache(tokens, names_filter=qkv)
    ptrs = {together[n].untyped_storage().data_ptr() for n in qkv}
    assert len(ptrs) == 1 and together.nbytes() == 3 * q.numel() * q.element_size()
    torch.testing.assert_close(together["q", 1], q, rtol=0, atol=0)
    # With the graph kept, the cached q is the one the forward used: grads w.r.t. it work.
    out, graph = gpt2.run_with_cache(tokens, names_filter=qkv[:1], with_grad=True)
    assert torch.autograd.grad(out.sum(), graph["q", 1])[0].shape == q.shape
    _, resid = gpt2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    assert list(resid) == [f"blocks.{i}.hook_resid_pre" for i in range(gpt2.cfg.n_layers)]
    _, listed = gpt2.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.attn.hook_z"])
    assert list(listed) == ["hook_embed", "blocks.0.attn.hook_z"]
    _, results = gpt2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
    assert results["result", 0].shape == (B, T, gpt2.cfg.n_heads, gpt2.cfg.d_model)


def test_default_run_keeps_no_graph_and_with_grad_keeps_it(gpt2, tokens) -> None:
    out, cache = gpt2.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert not out.requires_grad and not cache["resid_post", 1].requires_grad
    out, cache = gpt2.run_with_cache(
        tokens, names_filter="blocks.0.hook_resid_post", with_grad=True
    )
    resid = cache["resid_post", 0]
    assert out.requires_grad and resid.requires_grad
    (grad,) = torch.autograd.grad(out[:, -1, 3].sum(), resid)
    assert grad.shape == resid.shape and grad.abs().sum() > 0
    assert gpt2.embed.weight.grad is None  # autograd.grad does not accumulate


def test_bwd_caches_the_gradients_autograd_computes(gpt2, tokens) -> None:
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "hook_embed"]
    out, cache = gpt2.run_with_cache(tokens, names_filter=names, bwd=True)
    loss = out[:, -1].logsumexp(-1).sum()
    assert not any(n + "_grad" in cache for n in names)  # not before backward
    expected = torch.autograd.grad(loss, [cache[n] for n in names], retain_graph=True)
    loss.backward()
    gpt2.zero_grad(set_to_none=True)
    for name, grad in zip(names, expected, strict=True):
        torch.testing.assert_close(cache[name + "_grad"], grad, rtol=0, atol=1e-6)
        assert not cache[name + "_grad"].requires_grad

    # A loss function runs the backward inside run_with_cache.
    _, cache2 = gpt2.run_with_cache(
        tokens, names_filter=names, bwd=lambda logits: logits[:, -1].logsumexp(-1).sum()
    )
    gpt2.zero_grad(set_to_none=True)
    for name, grad in zip(names, expected, strict=True):
        torch.testing.assert_close(cache2[name + "_grad"], grad, rtol=0, atol=1e-6)
    with pytest.raises(LmscopeError, match="scalar"):
        gpt2.run_with_cache(tokens, names_filter=names, bwd=lambda logits: logits)


def test_stop_at_layer_skips_later_blocks(gpt2, tokens) -> None:
    _, full = gpt2.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    calls: list[str] = []
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(f"block{i}"))
        for i, block in enumerate(gpt2.blocks)
    ]
    try:
        resid, cache = gpt2.run_with_cache(tokens, stop_at_layer=1)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["block0"]  # block 1 never ran
    torch.testing.assert_close(resid, full["resid_pre", 1], rtol=0, atol=1e-6)
    assert "blocks.0.hook_resid_post" in cache
    assert not any(name.startswith("blocks.1.") for name in cache)
    n = gpt2.cfg.n_layers
    last, _ = gpt2.run_with_cache(tokens, stop_at_layer=n, names_filter=[])
    torch.testing.assert_close(last, full["resid_post", -1], rtol=0, atol=1e-6)
    neg, _ = gpt2.run_with_cache(tokens, stop_at_layer=-1, names_filter=[])
    torch.testing.assert_close(neg, full["resid_pre", n - 1], rtol=0, atol=1e-6)
    zero, _ = gpt2.run_with_cache(tokens, stop_at_layer=0, names_filter=[])
    torch.testing.assert_close(zero, full["resid_pre", 0], rtol=0, atol=0)
    with pytest.raises(LmscopeError, match="stop_at_layer=3 is invalid"):
        gpt2.run_with_cache(tokens, stop_at_layer=n + 1)
    assert not any(b._forward_pre_hooks for b in gpt2.blocks)


def test_device_and_remove_batch_dim(gpt2, tokens) -> None:
    _, cache = gpt2.run_with_cache(tokens[:1], device="cpu", remove_batch_dim=True)
    assert not cache.has_batch_dim
    assert cache["pattern", 0].shape == (gpt2.cfg.n_heads, T, T)
    assert cache["resid_pre", 0].device.type == "cpu"
    assert cache.to("cpu") is cache and cache["z", 1].shape == (T, gpt2.cfg.n_heads, 8)
    # Hooks inside MoE experts hold routed tokens, not a batch: left as they are.
    moe = build_model(small("mixtral-tiny")).eval()
    _, routed = moe.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert routed["resid_pre", 0].shape == (T, moe.cfg.d_model)
    expert = next(n for n in routed if ".experts." in n and n.endswith("hook_post"))
    assert routed[expert].ndim == 2 and routed[expert].shape[1] == moe.cfg.mlp_dim
    _, batched = gpt2.run_with_cache(tokens)
    with pytest.raises(LmscopeError, match="batch of 1"):
        batched.remove_batch_dim()
    with pytest.raises(LmscopeError, match="already removed"):
        cache.remove_batch_dim()


def test_hooks_are_removed_when_the_forward_raises(gpt2) -> None:
    bad = torch.full((1, 3), 999)  # outside the vocabulary
    with pytest.raises(LmscopeError, match="outside this model's vocabulary"):
        gpt2.run_with_cache(bad, bwd=True, stop_at_layer=1)
    assert not any(p.active for p in gpt2.hook_points().values())
    assert not any(b._forward_pre_hooks for b in gpt2.blocks)

    def boom(x: torch.Tensor, hook: HookPoint) -> None:
        raise RuntimeError("in a hook")

    gpt2.add_hook("blocks.1.attn.hook_z", boom)  # a user hook that fails mid-run...

    tokens = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="in a hook"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", boom)])
    with pytest.raises(RuntimeError, match="in a hook"):
        gpt2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"), bwd=True)
    # ...keeps only itself: the cache's hooks are gone.
    assert [p.name for p in gpt2.hook_points().values() if p.active] == ["blocks.1.attn.hook_z"]
    gpt2.reset_hooks()


def test_hooks_see_every_decoding_step_of_generate(gpt2) -> None:
    seen: list[tuple[int, ...]] = []

    def record(x: torch.Tensor, hook: HookPoint) -> None:
        seen.append(tuple(x.shape))

    prompt = [[5, 6, 7, 8]]
    with gpt2.hooks(fwd_hooks=[("blocks.1.hook_resid_post", record)]):
        result = gpt2.generate(prompt, max_new_tokens=4, eos_token_id=[])
    assert len(result.new_tokens[0]) == 4
    # The prefill over the 4 prompt tokens, then one position per new token (KV cache):
    # the last sampled token is never fed back.
    d = gpt2.cfg.d_model
    assert seen == [(1, 4, d), (1, 1, d), (1, 1, d), (1, 1, d)]
    assert not gpt2.hook_points()["blocks.1.hook_resid_post"].active


def test_cache_is_a_mapping(gpt2, tokens) -> None:
    _, cache = gpt2.run_with_cache(tokens, names_filter=["hook_embed"])
    assert isinstance(cache, ActivationCache)
    assert dict(cache) == {"hook_embed": cache["hook_embed"]}
    assert "ActivationCache(1 tensors" in repr(cache)


# --- memory: freed memory is kept while a CPU cache lives --------------------------------
def test_a_cpu_cache_holds_freed_memory_until_it_dies(gpt2, tokens) -> None:
    """The hold opens with the call, stays while the cache lives, ends when it dies
    (tensors taken out of it stay valid), and is never left open by a failed call."""
    import gc

    from lmscope import allocator

    assert allocator.open_holds() == 0
    first = gpt2.run_with_cache(tokens)[1]
    assert allocator.open_holds() == 1
    second = gpt2.run_with_cache(tokens)[1]
    assert allocator.open_holds() == 2
    assert allocator.keeping_freed_memory() == allocator.allocator_tunable()
    pattern = first["pattern", 0]
    del first
    gc.collect()
    assert allocator.open_holds() == 1 and pattern.sum().isfinite()
    del second
    gc.collect()
    assert allocator.open_holds() == 0 and not allocator.keeping_freed_memory()

    gpt2.run_with_cache(tokens, keep_freed_memory=False)
    assert allocator.open_holds() == 0
    with pytest.raises(LmscopeError, match="outside this model's vocabulary"):
        gpt2.run_with_cache(torch.full((1, 3), 999))
    with pytest.raises(LmscopeError, match="batch of 1"):
        gpt2.run_with_cache(tokens, remove_batch_dim=True)
    gc.collect()
    assert allocator.open_holds() == 0 and not allocator.keeping_freed_memory()
