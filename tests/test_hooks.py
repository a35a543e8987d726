"""Hook points: every name fires once with its documented shape; hooks edit exactly."""

from __future__ import annotations

import pytest
import torch

from lmscope import build_model
from lmscope.config import ModelConfig
from lmscope.hooks import HookError, HookPoint
from lmscope.presets import preset_names
from tests.conftest import small

B, T, S = 2, 6, 9  # batch, (target) positions, source positions of encoder-decoders


def documented_shape(name: str, cfg: ModelConfig) -> tuple[int, ...] | None:
    """The shape the docs promise for hook `name` (None: depends on routing)."""
    encoder_side = name.startswith("encoder") or name in ("hook_embed", "hook_pos_embed")
    n = S if cfg.architecture == "encoder-decoder" and encoder_side else T
    cross = ".cross_attn." in name
    n_k = S if cross else n
    leaf = name.rsplit(".", 1)[-1]
    nh, nkv, dh, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.d_model
    if ".experts." in name:
        return None  # [tokens routed to this expert, d_mlp]
    table: dict[str, tuple[int, ...]] = {
        "hook_scale": (B, n, 1),
        "hook_q": (B, n, nh, dh),
        "hook_rot_q": (B, n, nh, dh),
        "hook_k": (B, n_k, nkv, dh),
        "hook_rot_k": (B, n_k, nkv, dh),
        "hook_v": (B, n_k, nkv, dh),
        "hook_attn_scores": (B, nh, n, n_k),
        "hook_pattern": (B, nh, n, n_k),
        "hook_z": (B, n, nh, dh),
        "hook_result": (B, n, nh, d),
        "hook_pre": (B, n, cfg.mlp_dim),
        "hook_pre_linear": (B, n, cfg.mlp_dim),
        "hook_post": (B, n, cfg.mlp_dim),
        "hook_router_logits": (B, n, cfg.n_experts or 0),
        "hook_expert_weights": (B, n, cfg.experts_per_token),
        "hook_expert_indices": (B, n, cfg.experts_per_token),
    }
    return table.get(leaf, (B, n, d))


def _run(model: torch.nn.Module) -> torch.Tensor:
    if model.cfg.architecture == "encoder-decoder":
        return model(torch.randint(0, 61, (B, S)), torch.randint(0, 61, (B, T)))
    return model(torch.randint(0, 61, (B, T)))


@pytest.mark.parametrize("preset", preset_names())
def test_every_hook_fires_exactly_once_with_its_documented_shape(preset: str) -> None:
    model = build_model(small(preset)).eval()
    seen: dict[str, list[tuple[int, ...]]] = {}

    def record(x: torch.Tensor, hook: HookPoint) -> None:
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    names = model.hook_names()
    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda name: True, record)]):
        _run(model)
    assert list(seen) == names  # every name fired, in the order hook_names() lists them
    for name in names:
        assert len(seen[name]) == 1, name
        expected = documented_shape(name, model.cfg)
        if expected is not None:
            assert seen[name][0] == expected, name


def test_hook_names_follow_transformer_lens() -> None:
    names = set(build_model(small("gpt2-small")).hook_names())
    for expected in [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.ln1.hook_scale",
        "blocks.0.ln1.hook_normalized",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.0.attn.hook_result",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
        "ln_final.hook_normalized",
    ]:
        assert expected in names
    rope = set(build_model(small("llama-tiny")).hook_names())
    assert {"blocks.0.attn.hook_rot_q", "blocks.0.mlp.hook_pre_linear"} <= rope
    t5 = set(build_model(small("t5-small")).hook_names())
    assert {"decoder.0.cross_attn.hook_pattern", "decoder.1.hook_resid_mid_cross"} <= t5
    assert {"encoder.0.hook_resid_post", "decoder_final_ln.hook_normalized"} <= t5


@pytest.mark.parametrize("preset", ["gpt2-small", "mixtral-tiny", "bert-base", "t5-small"])
def test_identity_hooks_change_no_logit(preset: str) -> None:
    model = build_model(small(preset)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        baseline = _run(model)
        # Hooks that do not switch to another execution path leave every bit unchanged.
        lazy = ("hook_scale", "hook_attn_scores", "hook_pattern", "hook_result")
        eager = [(lambda n: not n.endswith(lazy), lambda x, h: x)]
        torch.manual_seed(1)
        with model.hooks(fwd_hooks=eager):
            assert torch.equal(_run(model), baseline)
        # Hooking everything also takes the explicit paths: equal to float rounding.
        torch.manual_seed(1)
        with model.hooks(fwd_hooks=[(lambda n: True, lambda x, h: x)]):
            torch.testing.assert_close(_run(model), baseline, atol=1e-5, rtol=0)


def test_zeroing_one_heads_z_equals_removing_that_head() -> None:
    model = build_model(small("llama-tiny")).eval()
    tokens = torch.randint(0, 61, (B, T))
    layer, head, dh = 1, 2, model.cfg.head_dim

    def ablate(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z

    with torch.no_grad():
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        # The same model without that head: its slice of W_O writes nothing.
        model.blocks[layer].attn.out.weight[:, head * dh : (head + 1) * dh] = 0
        removed = model(tokens)
    torch.testing.assert_close(hooked, removed, atol=1e-6, rtol=0)


def test_head_results_plus_output_bias_sum_to_attention_output() -> None:
    model = build_model(small("gpt2-small")).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)  # non-zero biases too
    got: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: HookPoint) -> None:
        got[hook.name] = x

    with torch.no_grad():
        model.run_with_hooks(
            torch.randint(0, 61, (B, T)),
            fwd_hooks=[("blocks.1.attn.hook_result", keep), ("blocks.1.hook_attn_out", keep)],
        )
    result = got["blocks.1.attn.hook_result"]
    bias = model.blocks[1].attn.out.bias
    torch.testing.assert_close(
        result.sum(2) + bias, got["blocks.1.hook_attn_out"], atol=1e-6, rtol=0
    )


def test_hooks_are_removed_when_the_body_raises() -> None:
    model = build_model(small("gpt2-small"))
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[(lambda n: True, lambda x, h: None)]),
    ):
        raise RuntimeError("boom")
    assert not any(p.active for p in model.hook_points().values())

    def failing(x: torch.Tensor, hook: HookPoint) -> None:
        raise ValueError("inside a hook")

    with pytest.raises(ValueError, match="inside a hook"):
        model.run_with_hooks(torch.randint(0, 61, (1, 3)), fwd_hooks=[("hook_embed", failing)])
    assert not model.hook_points()["hook_embed"].active


def test_hooks_context_removes_only_its_own_hooks() -> None:
    model = build_model(small("gpt2-small"))
    [handle] = model.add_hook("hook_embed", lambda x, h: None)
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, h: None)]):
        assert len(model.hook_points()["hook_embed"]._fwd) == 2
    assert model.hook_points()["hook_embed"]._fwd == [handle.fn]
    handle.remove()
    assert not model.hook_points()["hook_embed"].active


def test_unknown_hook_name_is_refused_with_a_suggestion() -> None:
    model = build_model(small("gpt2-small"))
    with pytest.raises(HookError, match=r"Did you mean 'blocks\.0\.attn\.hook_pattern'"):
        model.add_hook("blocks.0.attn.hook_patern", lambda x, h: None)


def test_a_hook_returning_something_else_than_a_tensor_is_refused() -> None:
    model = build_model(small("gpt2-small"))
    with pytest.raises(HookError, match="returned a Size; a hook must return a tensor"):
        model.run_with_hooks(
            torch.randint(0, 61, (1, 3)), fwd_hooks=[("hook_embed", lambda x, h: x.shape)]
        )


def test_backward_hooks_see_and_can_edit_gradients() -> None:
    model = build_model(small("gpt2-small"))
    tokens = torch.randint(0, 61, (B, T))
    grads: list[torch.Tensor] = []
    with model.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, h: grads.append(g))]):
        model(tokens).sum().backward()
    assert len(grads) == 1 and grads[0].shape == (B, T, 32) and grads[0].abs().sum() > 0

    model.zero_grad()
    with model.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, h: torch.zeros_like(g))]):
        model(tokens).sum().backward()
    # Nothing flows back through block 1's input: block 0 gets no gradient.
    assert model.blocks[0].mlp.fc_in.weight.grad.abs().sum() == 0
    assert model.blocks[1].mlp.fc_in.weight.grad.abs().sum() > 0


def test_hooks_fire_at_every_cached_decoding_step() -> None:
    model = build_model(small("llama-tiny")).eval()
    shapes: list[tuple[int, ...]] = []
    with (
        torch.no_grad(),
        model.hooks(
            fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, h: shapes.append(tuple(x.shape)))]
        ),
    ):
        cache = model.make_cache(1, 8)
        model(torch.randint(0, 61, (1, 5)), kv_cache=cache)
        model(torch.randint(0, 61, (1, 1)), kv_cache=cache)
        model(torch.randint(0, 61, (1, 1)), kv_cache=cache)
    assert shapes == [(1, 4, 5, 5), (1, 4, 1, 6), (1, 4, 1, 7)]


def test_an_idle_hook_point_returns_its_input_unchanged() -> None:
    point = HookPoint()
    x = torch.randn(3)
    assert point(x) is x and not point.active


def test_backward_hooks_of_run_with_hooks_fire_on_a_later_backward() -> None:
    model = build_model(small("gpt2-small"))
    grads: list[torch.Tensor] = []
    out = model.run_with_hooks(
        torch.randint(0, 61, (1, 4)),
        bwd_hooks=[("blocks.0.hook_resid_post", lambda g, h: grads.append(g))],
    )
    assert not model.hook_points()["blocks.0.hook_resid_post"].active
    out.sum().backward()
    assert len(grads) == 1 and grads[0].shape == (1, 4, 32)
    model(torch.randint(0, 61, (1, 4))).sum().backward()  # a later forward: no hook
    assert len(grads) == 1
