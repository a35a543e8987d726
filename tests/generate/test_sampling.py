"""Logits processors: parity with Hugging Face's, and the properties sampling relies on."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmscope.generate import (
    GenerationError,
    SamplingSettings,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    next_tokens,
    seen_mask,
)


def random_logits(batch: int = 4, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_hugging_face(penalty: float) -> None:
    logits = random_logits()
    ids = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(1))
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    ours = apply_repetition_penalty(logits, seen_mask(ids, 97, None), penalty)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_matches_hugging_face(temperature: float) -> None:
    logits = random_logits()
    expected = TemperatureLogitsWarper(temperature)(torch.zeros(4, 1, dtype=torch.long), logits)
    assert torch.equal(apply_temperature(logits, temperature), expected)


@pytest.mark.parametrize("k", [1, 5, 96, 97, 500])
def test_top_k_matches_hugging_face(k: int) -> None:
    logits = random_logits()
    expected = TopKLogitsWarper(k)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    ours = apply_top_k(logits, k)
    assert torch.equal(ours, expected)
    assert (torch.isfinite(ours).sum(-1) == min(k, 97)).all()  # no ties in random logits


@pytest.mark.parametrize("p", [0.01, 0.3, 0.9, 0.999, 1.0])
def test_top_p_matches_hugging_face(p: float) -> None:
    logits = random_logits()
    expected = TopPLogitsWarper(p)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    assert torch.equal(apply_top_p(logits, p), expected)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_top_p_keeps_smallest_set_reaching_p(p: float) -> None:
    logits = random_logits(batch=8)
    kept = torch.isfinite(apply_top_p(logits, p))
    probs = logits.softmax(-1)
    for row, keep in zip(probs, kept, strict=True):
        mass = row[keep].sum()
        assert mass >= p - 1e-6
        # Dropping the least likely kept token would fall below p: the set is minimal.
        assert mass - row[keep].min() < p + 1e-6


def test_top_p_tiny_keeps_exactly_the_most_likely_token() -> None:
    logits = random_logits(batch=6)
    kept = torch.isfinite(apply_top_p(logits, 1e-9))
    assert (kept.sum(-1) == 1).all()
    assert torch.equal(kept.float().argmax(-1), logits.argmax(-1))


def test_seen_mask_ignores_padding_even_when_pad_id_is_a_real_token() -> None:
    tokens = torch.tensor([[7, 7, 3, 5], [0, 0, 2, 7]])
    valid = torch.tensor([[True, True, True, True], [False, False, True, True]])
    seen = seen_mask(tokens, 10, valid)
    assert seen[0].nonzero().flatten().tolist() == [3, 5, 7]
    assert seen[1].nonzero().flatten().tolist() == [2, 7]  # the pads (id 0) are not seen
    # Pad id 7 at a padded slot must not erase a real 7 in the same row.
    tricky = seen_mask(torch.tensor([[7, 7]]), 10, torch.tensor([[False, True]]))
    assert tricky[0, 7]


def test_top_k_one_sampling_is_greedy() -> None:
    logits = random_logits(batch=32, vocab=61)
    settings = SamplingSettings(temperature=1.5, top_k=1)
    drawn = next_tokens(logits, settings, generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, logits.argmax(-1))


def test_low_temperature_limit_is_greedy() -> None:
    logits = random_logits(batch=64, vocab=61)
    gen = torch.Generator().manual_seed(4)
    drawn = next_tokens(logits, SamplingSettings(temperature=1e-3), generator=gen)
    assert torch.equal(drawn, logits.argmax(-1))
    # ...while temperature 1 does draw other tokens from such flat-ish rows.
    hot = next_tokens(logits, SamplingSettings(temperature=1.0), generator=gen)
    assert not torch.equal(hot, logits.argmax(-1))


def test_draws_stay_inside_top_k_and_follow_the_seed() -> None:
    logits = random_logits(batch=200, vocab=61)
    settings = SamplingSettings(temperature=1.0, top_k=3)
    a = next_tokens(logits, settings, generator=torch.Generator().manual_seed(5))
    b = next_tokens(logits, settings, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    top3 = logits.topk(3).indices
    assert (top3 == a[:, None]).any(-1).all()
    assert len(set(a.tolist())) > 3  # really sampled, not argmax


def test_sampling_frequencies_follow_the_processed_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, -1)
    settings = SamplingSettings(temperature=0.5, top_p=0.9)
    drawn = next_tokens(logits, settings, generator=torch.Generator().manual_seed(6))
    expected = apply_top_p(apply_temperature(logits[:1], 0.5), 0.9).softmax(-1)[0]
    freq = torch.bincount(drawn, minlength=4).float() / drawn.numel()
    assert expected[2:].sum() == 0 and freq[2:].sum() == 0  # filtered tokens never drawn
    assert torch.allclose(freq, expected, atol=0.015)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature=-1.0 must be >= 0"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
        ({"top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5 must be in (0, 1]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0 must be > 0"),
    ],
)
def test_invalid_settings_are_refused_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamplingSettings(**kwargs)
