"""LayerNorm and RMSNorm: worked example E1, formulas, fused vs hooked paths."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lmscope.model.norm import LayerNorm, RMSNorm, make_norm
from tests.conftest import small


def test_layernorm_matches_worked_example_e1() -> None:
    out = LayerNorm(4, eps=1e-5)(torch.tensor([[2.0, 4.0, 6.0, 8.0]]))
    expected = torch.tensor([[-1.341639, -0.447213, 0.447213, 1.341639]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_layernorm_hooked_path_exposes_scale_and_matches_fused_path(grad: bool) -> None:
    norm = LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6) * 4 + 1
    fused = norm(x)
    scales: list[torch.Tensor] = []
    norm.hook_scale.add_hook(lambda s, h: scales.append(s))
    with torch.set_grad_enabled(grad):
        hooked = norm(x)
    if grad:
        torch.testing.assert_close(hooked, fused, atol=1e-6, rtol=0)
    else:  # reading the scale without autograd leaves the fused kernel's output as is
        assert torch.equal(hooked, fused)
    expected_scale = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(scales[0], expected_scale)
    assert scales[0].shape == (2, 3, 1)


def _set_to_two(s: torch.Tensor, hook: object) -> None:
    s.fill_(2.0)  # an in-place edit, returning None


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize(
    "edit", [lambda s, h: torch.full_like(s, 2.0), _set_to_two], ids=["replaced", "in_place"]
)
def test_layernorm_output_follows_a_hook_that_changes_the_scale(grad: bool, edit) -> None:
    """Freezing or editing the scale (as attribution methods do) must reach the output,
    whether the hook returns a new scale or edits it in place, with or without autograd."""
    norm = LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6)
    centred = x - x.mean(-1, keepdim=True)
    with torch.set_grad_enabled(grad), norm.hook_scale.add_hook(edit):
        out = norm(x)
    torch.testing.assert_close(out, centred / 2.0 * norm.weight + norm.bias)
    if not grad:  # inference mode has no version counters: the same must hold there
        with torch.inference_mode(), norm.hook_scale.add_hook(edit):
            out = norm(x)
        torch.testing.assert_close(out, centred / 2.0 * norm.weight + norm.bias)


def test_layernorm_hooked_path_gradients_equal_the_fused_path() -> None:
    norm = LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, requires_grad=True)
    grads = []
    for hooked in (False, True):
        x.grad = None
        norm.zero_grad()
        with norm.hook_scale.add_hook(lambda s, h: None) if hooked else contextlib.nullcontext():
            norm(x).pow(2).sum().backward()
        grads.append([x.grad.clone(), norm.weight.grad.clone(), norm.bias.grad.clone()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rmsnorm_divides_by_root_mean_square_without_centring() -> None:
    norm = RMSNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # rms = sqrt(25 / 4) = 2.5
    torch.testing.assert_close(norm(x), torch.tensor([[1.2, 3.2, 0.0, 0.0]]), atol=1e-6, rtol=0)


def test_rmsnorm_in_bf16_computes_in_float32_then_casts_before_the_weight() -> None:
    norm = RMSNorm(8).to(torch.bfloat16)
    x = torch.randn(4, 8, dtype=torch.bfloat16) * 100
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(norm(x), ref * norm.weight)


def test_layernorm_without_bias_has_no_shift_parameter() -> None:
    norm = make_norm(small("shakespeare-char"))
    assert isinstance(norm, LayerNorm) and norm.bias is None
    assert sum(p.numel() for p in norm.parameters()) == 32


def test_norm_none_is_identity() -> None:
    norm = make_norm(small("gpt2-small", norm="none"))
    x = torch.randn(2, 32)
    assert norm(x) is x
