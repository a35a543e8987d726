"""The tuned lens: identity at start (equals the logit lens), training lowers held-out KL,
the output row's translator stays the identity, determinism, save/load bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmscope import build_model
from lmscope.errors import LmscopeError
from lmscope.interpret.logit_lens import logit_lens
from lmscope.interpret.tuned_lens import (
    TunedLens,
    lens_divergence,
    train_tuned_lens,
    tuned_lens,
)
from tests.conftest import small

STEPS = 12  # enough to cut the held-out KL by half or more on this model


def _model(preset: str = "gpt2-small") -> torch.nn.Module:
    return build_model(small(preset, n_layers=3, init_std=0.3), seed=0).eval()


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, TunedLens]:
    torch.manual_seed(0)
    model = _model()
    data = torch.randint(0, 61, (64, 16), generator=torch.Generator().manual_seed(1))
    return model, train_tuned_lens(model, data, steps=STEPS, batch_size=4, progress=False)


@pytest.mark.parametrize(
    ("preset", "norm"), [("gpt2-small", "recompute"), ("llama-tiny", "frozen")]
)
def test_an_untrained_tuned_lens_is_the_logit_lens_exactly(preset: str, norm: str) -> None:
    model = _model(preset)
    tokens = torch.randint(0, 61, (1, 8))
    lens = TunedLens.for_model(model)
    tuned = tuned_lens(model, lens, tokens, target=4, norm=norm)  # type: ignore[arg-type]
    plain = logit_lens(model, tokens, target=4, norm=norm)  # type: ignore[arg-type]
    assert tuned.method == "tuned lens" and plain.method == "logit lens"
    for field in ("top_ids", "top_probs", "kl_to_final", "target_probs", "target_ranks"):
        assert torch.equal(getattr(tuned, field), getattr(plain, field)), field
    data = torch.randint(0, 61, (4, 8))
    assert torch.equal(lens_divergence(model, data, lens), lens_divergence(model, data))


def test_training_lowers_held_out_kl_at_every_intermediate_layer(
    trained: tuple[torch.nn.Module, TunedLens],
) -> None:
    model, lens = trained
    held_out = torch.randint(0, 61, (16, 16), generator=torch.Generator().manual_seed(2))
    plain, tuned = lens_divergence(model, held_out), lens_divergence(model, held_out, lens)
    assert plain.shape == tuned.shape == (4,)
    assert (tuned[:-1] < 0.6 * plain[:-1]).all(), (plain, tuned)
    assert plain[-1].abs() < 1e-5 and tuned[-1].abs() < 1e-5  # the output row is the output
    losses = lens.info["losses"]
    assert len(losses) == STEPS and losses[-1] < 0.5 * losses[0]


def test_the_output_rows_translator_stays_the_identity(
    trained: tuple[torch.nn.Module, TunedLens],
) -> None:
    _, lens = trained
    last = lens.translators[-1]
    assert last.weight.abs().max() < 1e-5 and last.bias.abs().max() < 1e-5
    torch.testing.assert_close(lens.matrix(3), torch.eye(32), atol=1e-5, rtol=0)
    # The earlier rows did learn something.
    assert lens.translators[0].weight.abs().max() > 1e-2


def test_training_is_deterministic_for_a_seed() -> None:
    model = _model()
    data = torch.randint(0, 61, (64, 16), generator=torch.Generator().manual_seed(1))
    runs = [
        train_tuned_lens(model, data, steps=2, batch_size=4, seed=seed, progress=False)
        for seed in (0, 0, 1)
    ]
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0].translators[0].weight, runs[2].translators[0].weight)


def test_model_parameters_stay_frozen_and_untouched() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_tuned_lens(model, [torch.randint(0, 61, (2, 8))], steps=2, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards


def test_save_and_load_round_trip_bit_for_bit(
    trained: tuple[torch.nn.Module, TunedLens], tmp_path: Path
) -> None:
    model, lens = trained
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens")
    assert loaded.info == lens.info and (loaded.d_model, loaded.n_layers) == (32, 3)
    for (name, a), (_, b) in zip(
        lens.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, 61, (1, 6))
    assert torch.equal(
        tuned_lens(model, lens, tokens).top_probs, tuned_lens(model, loaded, tokens).top_probs
    )


def test_errors_name_the_problem(
    trained: tuple[torch.nn.Module, TunedLens], tmp_path: Path
) -> None:
    model, lens = trained
    with pytest.raises(LmscopeError, match=r"no tuned_lens\.json"):
        TunedLens.load(tmp_path)
    with pytest.raises(LmscopeError, match=r"n_layers=3.*n_layers=2"):
        tuned_lens(build_model(small("gpt2-small"), seed=0), lens, [1, 2])
    with pytest.raises(LmscopeError, match="ran out after 1 of 3"):
        train_tuned_lens(model, iter([torch.randint(0, 61, (2, 4))]), steps=3, progress=False)
    with pytest.raises(LmscopeError, match="empty"):
        train_tuned_lens(model, [], steps=3, progress=False)
    with pytest.raises(LmscopeError, match="does not exist"):
        lens(7, torch.zeros(32))
