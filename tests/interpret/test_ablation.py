"""Ablations: zero = weights set to zero, mean of a constant is a no-op, seeded resampling."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

import lmscope
from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.ablation import ablate, ablation_hooks
from lmscope.model import build_model
from tests.conftest import small

D_HEAD = 8


@pytest.fixture(scope="module")
def model() -> lmscope.BaseTransformer:
    return build_model(small("gpt2-small", n_layers=2, init_std=0.15), seed=0).eval()


@pytest.fixture(scope="module")
def tokens() -> Tensor:
    return torch.randint(0, 61, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference() -> Tensor:
    return torch.randint(0, 61, (8, 12), generator=torch.Generator().manual_seed(2))


def logits(model: lmscope.BaseTransformer, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return model(tokens)


def test_zero_ablating_heads_equals_zeroing_their_output_weights(model, tokens) -> None:
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[0].attn.W_O[1].zero_()  # a view of the output projection's weight
        edited.blocks[1].attn.W_O[2].zero_()
    expected = logits(edited, tokens)
    got = ablate(model, tokens, [(0, 1), (1, 2)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, logits(model, tokens), atol=1e-3)
    # a whole activation by name: zeroing the MLP's output = zero output weight and bias
    with torch.no_grad():
        edited.blocks[1].mlp.fc_out.weight.zero_()
        edited.blocks[1].mlp.fc_out.bias.zero_()
    got = ablate(model, tokens, [(0, 1), (1, 2), "blocks.1.hook_mlp_out"])
    torch.testing.assert_close(got, logits(edited, tokens), atol=1e-5, rtol=0)


def test_mean_ablation_of_a_constant_activation_is_a_no_op(reference, tokens) -> None:
    model = build_model(small("gpt2-small", n_layers=2, init_std=0.15), seed=3).eval()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.W_V[1].zero_()  # head 1's values are its bias alone: z is that bias everywhere
        attn.qkv.bias[attn.q_dim + attn.kv_dim + D_HEAD : attn.q_dim + attn.kv_dim + 2 * D_HEAD] = (
            0.7
        )
    plain = logits(model, tokens)
    for per_position in (False, True):
        got = ablate(
            model,
            tokens,
            (0, 1),
            method="mean",
            reference_tokens=reference,
            per_position=per_position,
        )
        torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    # the constant is not zero, so zero ablation does change the output
    assert not torch.allclose(ablate(model, tokens, (0, 1)), plain, atol=1e-3)


def _seen(model, tokens, hooks, name: str) -> Tensor:
    """The activation at `name` after the ablation hooks ran."""
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: HookPoint) -> None:
        seen["act"] = act

    with torch.no_grad(), model.hooks(fwd_hooks=[*hooks, (name, keep)]):
        model(tokens)
    return seen["act"]


def test_mean_ablation_uses_the_reference_mean(model, tokens, reference) -> None:
    name = "blocks.0.hook_attn_out"
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=name)
    ref = cache[name]  # [8, 12, d_model]
    hooks = ablation_hooks(model, name, method="mean", reference_tokens=reference)
    expected = ref.mean(dim=(0, 1)).expand(3, 9, -1)
    torch.testing.assert_close(_seen(model, tokens, hooks, name), expected)
    hooks = ablation_hooks(
        model, name, method="mean", reference_tokens=reference, per_position=True
    )
    expected = ref.mean(dim=0)[:9].expand(3, -1, -1)
    torch.testing.assert_close(_seen(model, tokens, hooks, name), expected)


def test_resample_ablation_takes_whole_reference_sequences_and_is_seeded(
    model, tokens, reference
) -> None:
    name = "blocks.1.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=name)
    hooks = ablation_hooks(model, (1, 3), method="resample", reference_tokens=reference, seed=5)
    got = _seen(model, tokens, hooks, name)
    drawn = torch.randint(8, (3,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got[..., 3, :], cache[name][drawn, :9, 3, :])
    with torch.no_grad():
        _, own = model.run_with_cache(tokens, names_filter=name)
    torch.testing.assert_close(got[..., :3, :], own[name][..., :3, :])  # other heads untouched

    first = ablate(model, tokens, (1, 3), method="resample", reference_tokens=reference, seed=5)
    again = ablate(model, tokens, (1, 3), method="resample", reference_tokens=reference, seed=5)
    other = ablate(model, tokens, (1, 3), method="resample", reference_tokens=reference, seed=6)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-4)


def test_ablation_hooks_are_removed(model, tokens) -> None:
    ablate(model, tokens, [(0, 0), "blocks.1.hook_resid_mid"], method="mean")
    assert not any(point.active for point in model.hook_points().values())


def test_bad_targets_and_methods_get_clear_errors(model, tokens, reference) -> None:
    with pytest.raises(LmscopeError, match=r"no hook point named 'blocks\.0\.hook_mlp'"):
        ablate(model, tokens, "blocks.0.hook_mlp")
    with pytest.raises(LmscopeError, match="layer 2 does not exist"):
        ablate(model, tokens, (2, 0))
    with pytest.raises(LmscopeError, match="head 4 does not exist"):
        ablate(model, tokens, [(0, 4)])
    with pytest.raises(LmscopeError, match="'median' is invalid"):
        ablate(model, tokens, (0, 0), method="median")
    with pytest.raises(LmscopeError, match="needs reference_tokens"):
        ablation_hooks(model, (0, 0), method="mean")
    with pytest.raises(LmscopeError, match="at least as long"):
        ablate(
            model,
            tokens,
            (0, 0),
            method="mean",
            reference_tokens=reference[:, :4],
            per_position=True,
        )
    with pytest.raises(LmscopeError, match="at least 2 reference sequences"):
        ablate(model, tokens, (0, 0), method="resample", reference_tokens=reference[:1])
    with pytest.raises(LmscopeError, match="no ablation targets"):
        ablate(model, tokens, [])
    with pytest.raises(LmscopeError, match="hook name or a \\(layer, head\\) pair"):
        ablate(model, tokens, [(0, True)])
