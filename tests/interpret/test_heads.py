"""Head detectors: planted heads of a hand-built model, TransformerLens's patterns, errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.heads import DETECTORS, detect_heads, detection_mask, repeated_random_tokens
from lmscope.model import build_model
from tests.conftest import small
from tests.interpret.induction_model import (
    BOS,
    DUPLICATE,
    FIRST,
    INDUCTION,
    PREVIOUS,
    V,
    induction_model,
)

PLANTED = {
    "previous_token": PREVIOUS,
    "duplicate_token": DUPLICATE,
    "induction": INDUCTION,
    "first_token": FIRST,
}


@pytest.fixture(scope="module")
def scores():
    return detect_heads(induction_model(), seq_len=16, batch=8, bos=BOS)


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_planted_head_scores_near_one_and_every_other_head_near_zero(scores, detector):
    grid = scores.scores[detector]
    planted = PLANTED[detector]
    assert grid.shape == (2, 4)
    assert grid[planted] >= 0.9
    others = [
        grid[layer, head] for layer in range(2) for head in range(4) if (layer, head) != planted
    ]
    assert max(others) <= 0.1, grid
    assert scores.top(detector, 1)[0][:2] == planted


def test_the_encoder_version_finds_the_positional_heads_over_the_full_pattern():
    result = detect_heads(induction_model(causal=False), seq_len=16, batch=8, bos=BOS)
    assert result.scores["previous_token"][PREVIOUS] >= 0.9
    assert result.scores["first_token"][FIRST] >= 0.9
    # Bidirectional: the duplicate head also looks at *later* copies, which the
    # (earlier-only) target misses, so it falls below its causal score of 1.
    assert 0.5 < result.scores["duplicate_token"][DUPLICATE] < 0.95
    assert result.induction_loss is None  # no LM head on an encoder


def test_induction_loss_is_the_mean_next_token_loss_of_each_copy(scores):
    ids = repeated_random_tokens(V, 16, 8, seed=0, bos=BOS)
    with torch.no_grad():
        logits = induction_model()(ids)
    losses = -F.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    # losses[:, t] is the loss of predicting token t + 1; copies start at 1 and 17.
    first = losses[:, 1:16].mean()
    second = losses[:, 17:32].mean()
    assert scores.induction_loss.first_half == pytest.approx(float(first), rel=1e-5)
    assert scores.induction_loss.second_half == pytest.approx(float(second), rel=1e-5)
    assert scores.induction_loss.gap > 5


def test_ablating_the_induction_head_removes_the_loss_gap_and_its_score_stays():
    model = induction_model()

    def ablate(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        z = z.clone()
        z[:, :, INDUCTION[1]] = 0
        return z

    with model.hooks(fwd_hooks=[(f"blocks.{INDUCTION[0]}.attn.hook_z", ablate)]):
        result = detect_heads(model, seq_len=16, batch=8, bos=BOS)
    assert abs(result.induction_loss.gap) < 1e-4
    assert result.induction_loss.first_half == pytest.approx(math.log(V), rel=1e-4)
    assert result.scores["induction"][INDUCTION] >= 0.9  # its pattern is untouched


def test_repeated_random_tokens_layout_and_seed():
    ids = repeated_random_tokens(50, 10, 3, seed=1, bos=7, eos=8, avoid=[0, 1])
    assert ids.shape == (3, 22)
    assert (ids[:, 0] == 7).all() and (ids[:, -1] == 8).all()
    assert torch.equal(ids[:, 1:11], ids[:, 11:21])
    assert not torch.isin(ids[:, 1:21], torch.tensor([0, 1, 7, 8])).any()
    assert torch.equal(ids, repeated_random_tokens(50, 10, 3, seed=1, bos=7, eos=8, avoid=[0, 1]))
    assert not torch.equal(
        ids, repeated_random_tokens(50, 10, 3, seed=2, bos=7, eos=8, avoid=[0, 1])
    )


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("llama-tiny", {"n_kv_heads": 2, "sliding_window": 6}),  # GQA + sliding window
        ("gpt2-small", {}),
        ("bert-base", {}),  # bidirectional
    ],
)
def test_scores_match_transformer_lens_detection_patterns(preset, overrides):
    """TransformerLens's "mul" score divides by every query row; ours by the rows that
    have a target: the same numbers after rescaling by rows / rows-with-target."""
    from transformer_lens import head_detector as tl

    model = build_model(small(preset, **overrides).replace(attn_impl="auto"), seed=0).eval()
    ids = repeated_random_tokens(model.cfg.vocab_size, 8, 1, seed=3, bos=0)
    ours = detect_heads(model, ids, detectors=["previous_token", "duplicate_token", "induction"])
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    for name in ("previous_token", "duplicate_token", "induction"):
        pattern = getattr(tl, f"get_{name}_head_detection_pattern")(ids.cpu())
        assert torch.equal(pattern.bool(), detection_mask(ids, name)[0]), name
        rows = pattern.bool().any(-1).sum().item()
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                theirs = tl.compute_head_attention_similarity_score(
                    cache["pattern", layer][0, head],
                    pattern,
                    exclude_bos=False,
                    exclude_current_token=False,
                    error_measure="mul",
                )
                expected = theirs * ids.shape[1] / rows
                assert float(ours.scores[name][layer, head]) == pytest.approx(expected, abs=1e-5)
    for grid in ours.scores.values():
        assert ((grid >= 0) & (grid <= 1 + 1e-6)).all()


def test_a_detector_without_targets_gives_nan_ranked_last_and_null_in_json():
    model = induction_model()
    result = detect_heads(
        model, torch.arange(1, 20), detectors=["duplicate_token", "previous_token"]
    )
    assert torch.isnan(result.scores["duplicate_token"]).all()
    assert math.isnan(result.top("duplicate_token", 1)[0][2])
    nan_first = result.scores["previous_token"].clone()
    nan_first[0, 1] = math.nan
    result.scores["previous_token"] = nan_first
    assert [r[:2] for r in result.top("previous_token", 8)][-1] == (0, 1)  # NaN ranks last
    data = json.loads(json.dumps(result.to_dict()))
    assert data["scores"]["duplicate_token"][0][0] is None
    assert data["top"]["previous_token"][0] == {"layer": 0, "head": 0, "score": pytest.approx(1.0)}
    assert data["settings"]["tokens"] == "given" and result.induction_loss is None


def test_table_and_plot(scores, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(scores.table(sort_by="induction", limit=3))
    listed = re.findall(r"L\d\.H\d", console.export_text())
    assert len(listed) == 3 and listed[0] == "L1.H0"
    console.print(scores.table())
    assert len(re.findall(r"L\d\.H\d", console.export_text())) == 8  # every head
    path = scores.plot(tmp_path / "heads.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused_clearly():
    model = induction_model()
    with pytest.raises(LmscopeError, match=r"unknown head detector 'inductoin'.*induction"):
        detect_heads(model, detectors=["inductoin"])
    with pytest.raises(LmscopeError, match="exceed this model's max_seq_len"):
        detect_heads(model, seq_len=30)
    with pytest.raises(LmscopeError, match="integer ids"):
        detect_heads(model, torch.rand(2, 5))
    with pytest.raises(LmscopeError, match="no scores for detector 'induction'"):
        detect_heads(model, seq_len=4, detectors=["first_token"]).top("induction")
