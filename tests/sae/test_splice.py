"""Splicing an SAE in: unchanged outputs with the error term, and edits that move only what
they should, also during KV-cached generation."""

from __future__ import annotations

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.generate import generate
from lmscope.sae import build_sae
from lmscope.sae.splice import (
    ablate_features,
    clamp_features,
    splice_sae,
    steer_with_feature,
    steering_vector,
)
from tests.sae.tiny import HOOK, tiny_model, token_stream


def make_sae(arch: str = "standard", **fields: object):
    extra = {"k": 8} if arch in ("topk", "batchtopk") else {}
    return build_sae(d_in=32, d_sae=64, arch=arch, hook_name=HOOK, seed=1, **extra, **fields)


def at_hook(model: torch.nn.Module, tokens: torch.Tensor, hook: str = HOOK) -> torch.Tensor:
    """The activation at `hook` as the rest of the model sees it (after any splice)."""
    seen: list[torch.Tensor] = []
    with model.hooks([(hook, lambda x, h: seen.append(x.detach().clone()))]), torch.no_grad():
        model(tokens)
    return seen[0]


TOKENS = token_stream(2 * 12).reshape(2, 12)


@pytest.mark.parametrize(
    ("arch", "fields"),
    [
        ("standard", {}),
        ("topk", {}),
        ("jumprelu", {}),
        (
            "standard",
            {"normalize_activations": "expected_average_only_in", "activation_scale": 0.3},
        ),
    ],
)
def test_error_term_leaves_logits_unchanged(arch: str, fields: dict[str, object]) -> None:
    model, sae = tiny_model(), make_sae(arch, **fields)
    with torch.no_grad():
        clean = model(TOKENS)
        with splice_sae(model, sae):
            spliced = model(TOKENS)
        with splice_sae(model, sae, keep_error=False):
            replaced = model(TOKENS)
        after = model(TOKENS)
    torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-5)
    assert (replaced - clean).abs().max() > 1e-2  # the reconstruction alone is not exact
    torch.testing.assert_close(after, clean, rtol=0, atol=0)  # hooks gone


def test_ablate_moves_only_the_ablated_feature() -> None:
    model = tiny_model()
    sae = make_sae(normalize_activations="expected_average_only_in", activation_scale=0.5)
    x = at_hook(model, TOKENS)
    acts = sae.encode(x).detach()
    f = int(((acts > 0).float().mean((0, 1)) - 0.5).abs().argmin())  # active about half the time
    with ablate_features(model, sae, [f]):
        edited = at_hook(model, TOKENS)
        upstream = at_hook(model, TOKENS, "blocks.0.hook_resid_mid")
    expected = x - acts[..., f, None] * sae.W_dec[f].detach() / 0.5
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
    inactive = acts[..., f] == 0
    assert inactive.any() and (~inactive).any()
    torch.testing.assert_close(edited[inactive], x[inactive], rtol=0, atol=1e-5)
    torch.testing.assert_close(upstream, at_hook(model, TOKENS, "blocks.0.hook_resid_mid"))


def test_clamp_sets_the_feature_and_nothing_else() -> None:
    model, sae = tiny_model(), make_sae("topk")
    x = at_hook(model, TOKENS)
    acts = sae.encode(x).detach()
    with clamp_features(model, sae, {3: 2.5, 10: 0.0}) as splice:
        edited = at_hook(model, TOKENS)
        # the SAE's latents as the splice produced them
        seen: list[torch.Tensor] = []
        with sae.hooks([("hook_sae_acts_post", lambda a, h: seen.append(a.clone()))]):
            at_hook(model, TOKENS)
    assert splice.clamped == {3: 2.5, 10: 0.0}
    delta = (2.5 - acts[..., 3, None]) * sae.W_dec[3] + (0.0 - acts[..., 10, None]) * sae.W_dec[10]
    torch.testing.assert_close(edited, x + delta.detach(), rtol=0, atol=1e-5)
    assert torch.all(seen[0][..., 3] == 2.5) and torch.all(seen[0][..., 10] == 0)


def test_steering_adds_the_decoder_direction_and_zero_is_a_no_op() -> None:
    model, sae = tiny_model(), make_sae()
    x = at_hook(model, TOKENS)
    clean = model(TOKENS).detach()
    with steer_with_feature(model, sae, 5, 0.0):
        torch.testing.assert_close(model(TOKENS).detach(), clean, rtol=0, atol=1e-5)
    with steer_with_feature(model, sae, 5, 4.0):
        torch.testing.assert_close(
            at_hook(model, TOKENS), x + 4.0 * sae.W_dec[5].detach(), rtol=0, atol=1e-5
        )
    torch.testing.assert_close(steering_vector(sae, 5, 4.0), 4.0 * sae.W_dec[5].detach())


def test_steering_during_cached_generation_equals_full_recomputation() -> None:
    model, sae = tiny_model(), make_sae()
    prompt = token_stream(6, seed=4).tolist()
    direction = 8.0
    with steer_with_feature(model, sae, 7, direction):
        cached = generate(model, [prompt], max_new_tokens=10, temperature=0.0, eos_token_id=[])
        tokens = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(10):  # no KV cache: the whole sequence every step
                nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
    unsteered = generate(model, [prompt], max_new_tokens=10, temperature=0.0, eos_token_id=[])
    assert cached.sequences[0] == tokens[0].tolist()
    assert cached.sequences[0] != unsteered.sequences[0]  # the steering mattered


def test_transcoder_splice_from_input_to_output_hook() -> None:
    model = tiny_model()
    tc = build_sae(
        d_in=32, d_sae=64, d_out=32, arch="standard", hook_name="blocks.1.ln2.hook_normalized",
        hook_name_out="blocks.1.hook_mlp_out", seed=2,
    )  # fmt: skip
    clean = model(TOKENS).detach()
    with splice_sae(model, tc) as splice:
        torch.testing.assert_close(model(TOKENS).detach(), clean, rtol=0, atol=1e-5)
        splice.ablate_features(range(64))  # output = the error term alone
        x_in = at_hook(model, TOKENS, "blocks.1.ln2.hook_normalized")
        edited = at_hook(model, TOKENS, "blocks.1.hook_mlp_out")
    with torch.no_grad():
        mlp_out = at_hook(model, TOKENS, "blocks.1.hook_mlp_out")
        expected = mlp_out - tc(x_in) + tc.b_dec
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)


def test_hooks_are_removed_on_errors_and_bad_features_are_refused() -> None:
    model, sae = tiny_model(), make_sae()
    with pytest.raises(RuntimeError, match="boom"), splice_sae(model, sae):
        raise RuntimeError("boom")
    assert not model.hook_points()[HOOK].active and not sae.hook_sae_acts_post.active
    with splice_sae(model, sae) as splice, pytest.raises(LmscopeError, match="features 0 to 63"):
        splice.clamp_features({64: 1.0})
    with (
        pytest.raises(LmscopeError, match="hook_name="),
        splice_sae(model, build_sae(d_in=32, d_sae=8)),
    ):
        pass
