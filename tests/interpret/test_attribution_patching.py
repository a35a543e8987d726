"""Attribution patching: exact on a linear model, within a stated tolerance on a
near-linear one, the error reported against exact patching, no parameter gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import lmscope
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution_patching import attribution_patch, compare_with_exact
from lmscope.interpret.metrics import logit_diff_metric
from lmscope.interpret.patching import activation_patch
from lmscope.model import build_model
from tests.conftest import small

METRIC = logit_diff_metric(5, 9)
DIFF = 2
#: The tolerance the docs state for a near-linear model (attention-only, no norms, weights
#: of std 0.02): normalised units, where 1 is the whole clean-corrupted gap.
NEAR_LINEAR_MAX_ERROR = 0.01


@pytest.fixture(scope="module")
def pair() -> tuple[Tensor, Tensor]:
    clean = torch.tensor([[7, 3, 11, 20, 4, 33, 8]])
    corrupted = clean.clone()
    corrupted[0, DIFF] = 40
    return clean, corrupted


def attention_only(init_std: float, seed: int = 0) -> lmscope.BaseTransformer:
    cfg = small("gpt2-small", n_layers=3, attn_only=True, norm="none", init_std=init_std)
    return build_model(cfg, seed=seed).eval()


def test_exact_on_a_model_that_is_linear_in_its_activations(pair) -> None:
    """Fixed (uniform) attention, no norms: the logits are affine in every activation
    patched here, so the first-order estimate is the exact value."""
    model = attention_only(0.1)
    with torch.no_grad():
        for block in model.blocks:  # queries and keys to zero: every pattern is uniform
            attn = block.attn
            attn.qkv.weight[: attn.q_dim + attn.kv_dim] = 0
            attn.qkv.bias[: attn.q_dim + attn.kv_dim] = 0
    clean, corrupted = pair
    for activation in ("resid_pre", "resid_post", "attn_out", "z", "v"):
        for direction in ("denoise", "noise"):
            report = compare_with_exact(
                model, clean, corrupted, METRIC, activation=activation, direction=direction
            )
            # fp32 rounding of the normalised metric (a ratio of logit differences) ~1e-4.
            assert report.max_abs_error < 5e-4, (activation, direction)
    by_pos = compare_with_exact(model, clean, corrupted, METRIC, activation="z", by_position=True)
    assert by_pos.attribution.values.shape == (3, 4, 7) and by_pos.max_abs_error < 5e-4


def test_matches_exact_patching_on_a_near_linear_model_within_tolerance(pair) -> None:
    model = attention_only(0.02)
    clean, corrupted = pair
    for activation in ("resid_pre", "attn_out", "z", "v"):
        report = compare_with_exact(model, clean, corrupted, METRIC, activation=activation)
        assert report.max_abs_error < NEAR_LINEAR_MAX_ERROR, activation
        assert report.correlation > 0.999, activation
        assert report.attribution.values.shape == report.exact.values.shape
        assert report.attribution.axes == report.exact.axes


def test_the_error_is_reported_honestly_where_the_model_is_not_linear(pair) -> None:
    model = build_model(small("gpt2-small", n_layers=3, init_std=0.15), seed=0).eval()
    clean, corrupted = pair
    report = compare_with_exact(model, clean, corrupted, METRIC, activation="resid_pre")
    exact = activation_patch(model, clean, corrupted, METRIC, activation="resid_pre")
    torch.testing.assert_close(report.exact.values, exact.values)
    diff = (report.attribution.values - exact.values).abs()
    assert report.max_abs_error == pytest.approx(float(diff.max()), abs=1e-6)
    assert report.mean_abs_error == pytest.approx(float(diff.mean()), abs=1e-6)
    assert report.max_abs_error > NEAR_LINEAR_MAX_ERROR  # LayerNorm and big weights
    data = report.to_dict()
    assert set(data) == {"max_abs_error", "mean_abs_error", "correlation", "attribution", "exact"}
    # both runs agree where nothing differs: positions before the change, layer 0 except it
    assert report.attribution.values[:, :DIFF].abs().max() < 1e-6
    assert report.attribution.values[0, DIFF + 1 :].abs().max() < 1e-6
    assert report.attribution.values[0, DIFF] != 0


def test_no_parameter_gradients_and_frozen_weights_work(pair) -> None:
    model = build_model(small("gpt2-small", n_layers=2, init_std=0.15), seed=0).eval()
    clean, corrupted = pair
    first = attribution_patch(model, clean, corrupted, METRIC, activation="mlp_out")
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    frozen = attribution_patch(model, clean, corrupted, METRIC, activation="mlp_out")
    torch.testing.assert_close(first.values, frozen.values)
    assert frozen.method == "attribution" and frozen.axes == ("layer", "position")
    heads = attribution_patch(
        model, clean, corrupted, METRIC, activation="pattern", direction="noise"
    )
    assert heads.values.shape == (2, 4) and heads.direction == "noise"


def test_bad_inputs_get_clear_errors(pair) -> None:
    model = attention_only(0.02)
    clean, corrupted = pair
    with pytest.raises(LmscopeError, match="differentiable metric"):
        attribution_patch(model, clean, corrupted, lambda logits: METRIC(logits).detach())
    with pytest.raises(LmscopeError, match=r"no hook 'blocks\.0\.hook_mlp_out'"):
        attribution_patch(model, clean, corrupted, METRIC, activation="mlp_out")
    with pytest.raises(LmscopeError, match="same shape"):
        compare_with_exact(model, clean, corrupted[:, :3], METRIC)
    with pytest.raises(LmscopeError, match="corruption changes nothing"):
        attribution_patch(model, clean, clean, METRIC)
