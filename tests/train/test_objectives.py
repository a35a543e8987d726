"""Objectives: next-token shift, BERT's 80/10/10 masking, T5 span corruption."""

from __future__ import annotations

import pytest
import torch

from lmscope import LmscopeError
from lmscope.train.objectives import (
    IGNORE,
    MaskedLM,
    NextToken,
    SpanCorruption,
    loss_sum,
    make_objective,
)


def test_next_token_labels_are_inputs_shifted_by_one() -> None:
    windows = torch.arange(12).view(2, 6)
    batch = NextToken(100).make(windows, torch.Generator())
    assert torch.equal(batch.inputs["tokens"], windows[:, :-1])
    assert torch.equal(batch.labels, windows[:, 1:])
    assert batch.n_targets == 10


def test_masked_lm_corrupts_about_15_percent_split_80_10_10() -> None:
    vocab = 1000
    tokens = torch.randint(0, vocab, (64, 513))
    batch = MaskedLM(vocab, 0.15).make(tokens, torch.Generator().manual_seed(0))
    original, corrupted, labels = tokens[:, :-1], batch.inputs["tokens"], batch.labels
    chosen = labels != IGNORE
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], original[chosen])  # labels are the originals
    assert torch.equal(corrupted[~chosen], original[~chosen])  # the rest is untouched
    masked = (corrupted == vocab) & chosen
    changed = (corrupted != original) & (corrupted != vocab) & chosen
    kept = (corrupted == original) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(changed.sum().item() / n - 0.1) < 0.02  # random ids (rarely equal: ~0.01%)
    assert abs(kept.sum().item() / n - 0.1) < 0.02
    assert corrupted.max() <= vocab and MaskedLM(vocab).special_tokens() == {"[MASK]": vocab}


def test_span_corruption_input_and_target_reassemble_the_original() -> None:
    vocab, block = 50, 40
    objective = SpanCorruption(vocab, block, fraction=0.15, mean_span=3.0)
    windows = torch.randint(0, vocab, (5, block + 1))
    batch = objective.make(windows, torch.Generator().manual_seed(3))
    source, target = batch.inputs["tokens"], batch.labels
    assert torch.equal(batch.inputs["decoder_tokens"][:, 1:], target[:, :-1])
    assert (batch.inputs["decoder_tokens"][:, 0] == objective.start_id).all()
    for row in range(5):
        # Replace each sentinel in the source by the span that follows it in the target.
        spans: dict[int, list[int]] = {}
        current = None
        for token in target[row].tolist()[:-1]:
            if token >= objective.sentinel:
                current = token
                spans[current] = []
            else:
                spans[current].append(token)  # type: ignore[index]
        rebuilt = []
        for token in source[row].tolist()[:-1]:
            rebuilt += spans[token] if token >= objective.sentinel else [token]
        assert rebuilt == windows[row, :-1].tolist()
        assert sum(len(s) for s in spans.values()) == objective.n_noise
        assert len(spans) == objective.n_spans
    assert objective.extra_tokens == 2 + objective.n_spans


def test_loss_sum_ignores_unlabelled_positions() -> None:
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, IGNORE, 3], [IGNORE, IGNORE, 0]])
    expected = -(
        logits[0, 0].log_softmax(-1)[1]
        + logits[0, 2].log_softmax(-1)[3]
        + logits[1, 2].log_softmax(-1)[0]
    )
    torch.testing.assert_close(loss_sum(logits, labels), expected)


def test_objective_must_fit_the_architecture() -> None:
    assert make_objective("auto", "encoder", 10, 8, 0.15, 3.0).name == "masked-lm"
    assert make_objective("auto", "encoder-decoder", 10, 8, 0.15, 3.0).name == "span-corruption"
    with pytest.raises(LmscopeError, match="does not fit a decoder model"):
        make_objective("masked-lm", "decoder", 10, 8, 0.15, 3.0)
