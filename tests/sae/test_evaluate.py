"""evaluate_sae: known answers for an identity and a zero SAE, brute-force statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmscope.errors import LmscopeError
from lmscope.sae import build_sae, metrics
from lmscope.sae.activation_store import ActivationStore
from lmscope.sae.evaluate import evaluate_sae, plot_feature_density
from tests.sae.tiny import HOOK, tiny_model, token_stream

ROWS = token_stream(6 * 10, seed=2).reshape(6, 10)


def identity_sae():
    """relu(x) - relu(-x) = x: a ReLU SAE with latents [x+, x-] reconstructs exactly."""
    sae = build_sae(d_in=32, d_sae=64, arch="standard", hook_name=HOOK)
    eye = torch.eye(32)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def ce_with_hook(model: torch.nn.Module, tokens: torch.Tensor, fn=None) -> float:
    with model.hooks([(HOOK, fn)] if fn else []), torch.no_grad():
        logits = model(tokens)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, 61), tokens[:, 1:].reshape(-1)))


def test_identity_sae_recovers_all_the_loss() -> None:
    model = tiny_model()
    result = evaluate_sae(model, identity_sae(), ROWS, batch_size=4)
    assert result.n_tokens == 60
    assert result.fvu == pytest.approx(0, abs=1e-10) and result.mse == pytest.approx(0, abs=1e-12)
    assert result.ce_spliced == pytest.approx(result.ce_clean, abs=1e-6)
    assert result.loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert result.l0 == pytest.approx(32.0)  # one of x+, x- per nonzero coordinate
    assert result.ce_clean == pytest.approx(ce_with_hook(model, ROWS), rel=1e-6)
    zero = ce_with_hook(model, ROWS, lambda x, h: torch.zeros_like(x))
    assert result.ce_zero == pytest.approx(zero, rel=1e-6)
    assert result.ce_zero > result.ce_clean + 0.01  # the baseline is a real gap


def test_zero_output_sae_recovers_nothing() -> None:
    sae = identity_sae()
    with torch.no_grad():
        sae.W_dec.zero_()
    result = evaluate_sae(tiny_model(), sae, ROWS)
    assert result.loss_recovered == pytest.approx(0.0, abs=1e-5)
    assert result.to_dict()["loss_recovered"] == result.loss_recovered


def test_statistics_equal_brute_force_and_skip_special_tokens() -> None:
    model = tiny_model()
    sae = build_sae(d_in=32, d_sae=48, arch="topk", k=5, hook_name=HOOK, seed=3)
    rows = ROWS.clone()
    rows[:, ::3] = 7
    result = evaluate_sae(model, sae, rows, batch_size=4, exclude_special=[7])
    seen: list[torch.Tensor] = []
    with model.hooks([(HOOK, lambda x, h: seen.append(x))]), torch.no_grad():
        model(rows)
    x = seen[0][rows != 7]
    with torch.no_grad():
        acts, recon = sae.encode(x), sae(x)
    assert result.n_tokens == int((rows != 7).sum())
    assert result.l0 == pytest.approx(5.0)
    assert result.mse == pytest.approx(float(metrics.mse(recon, x)), rel=1e-5)
    assert result.fvu == pytest.approx(float(metrics.fvu(recon, x)), rel=1e-5)
    density = (acts > 0).double().mean(0)
    torch.testing.assert_close(result.density, density)
    assert result.dead_fraction == pytest.approx(float((density == 0).double().mean()))
    assert result.dense_fraction == pytest.approx(float((density > 0.1).double().mean()))


def test_reads_the_tokens_of_an_activation_store_and_plots(tmp_path: Path) -> None:
    model = tiny_model()
    store = ActivationStore(model, None, ROWS, HOOK, context_size=10)
    result = evaluate_sae(model, identity_sae(), store, max_contexts=4)
    assert result.n_tokens == 40
    png = plot_feature_density(result.density, tmp_path / "density.png", title="identity")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LmscopeError, match="no hook_name"):
        evaluate_sae(model, build_sae(d_in=32, d_sae=8), ROWS)
