"""`lmscope steer` and `lmscope probe` on a tiny saved model with a character tokenizer."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lmscope
from lmscope.cli import app, main
from lmscope.interpret.datasets import STEERING_PAIRS, sentiment
from lmscope.interpret.steering import SteeringVector, steering_vector
from lmscope.interpret.steering_effect import steering_effect
from tests.conftest import small

runner = CliRunner()
PROMPT = "I think you are"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory: a random 2-layer GPT-2 shape and a tokenizer of the sets' characters."""
    from lmscope.tokenizers import CharTokenizer

    text = "".join(sentiment().texts) + "".join(p + n for p, n in STEERING_PAIRS) + PROMPT
    tok = CharTokenizer.from_text(text)
    cfg = small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.2, max_seq_len=128)
    path = tmp_path_factory.mktemp("steer") / "model"
    lmscope.build_model(cfg, seed=0).save(path)
    tok.save(path)
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_steer_json_matches_the_library(model_dir: Path, tmp_path: Path) -> None:
    args = ["--layer", "1", "--prompt", PROMPT, "--max-new-tokens", "10"]
    out = json.loads(
        invoke(
            "steer",
            str(model_dir),
            *args,
            "--positive",
            "Love",
            "--negative",
            "Hate",
            "--coef",
            "0",
            "--coef",
            "6",
            "--targets",
            "l,w",
            "--baseline",
            "h",
            "--position",
            "mean",
            "--save",
            str(tmp_path / "vec"),
            "--plot",
            str(tmp_path / "effect.png"),
            "--json",
        )
    )
    from lmscope.tokenizers import load_tokenizer

    model, tok = lmscope.load(model_dir).eval(), load_tokenizer(model_dir)
    vector = steering_vector(model, tok, ["Love"], ["Hate"], layer=1, position="mean")
    assert out["hook"] == "blocks.1.hook_resid_pre" and out["norm"] == pytest.approx(vector.norm)
    plain = model.generate(PROMPT, tokenizer=tok, max_new_tokens=10)
    assert out["generations"]["0.0"] == plain.texts[0] and len(out["generations"]["6.0"]) == 10
    effect = steering_effect(model, tok, PROMPT, vector, [0, 6], ["l", "w"], baseline_words=["h"])
    assert [r["delta"] for r in out["effect"]["rows"]] == pytest.approx(
        [r["delta"] for r in effect.rows()]
    )
    assert out["effect"]["rows"][0]["delta"] == 0.0
    assert (tmp_path / "effect.png").stat().st_size > 1000
    saved = SteeringVector.load(tmp_path / "vec")
    assert saved.metadata["positive"] == ["Love"] and saved.layer == 1


def test_steer_prints_generations_and_the_table(model_dir: Path) -> None:
    out = invoke(
        "steer",
        str(model_dir),
        "--layer",
        "0",
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "5",
        "--targets",
        "a,e",
        "--continuation-tokens",
        "3",
    )
    assert f"from {len(STEERING_PAIRS)} positive" in out  # the built-in pairs
    for coef in ("0", "4", "8"):
        assert re.search(rf"coef {coef}: {PROMPT}", out)
    assert "Δ over continuation" in out and "Δ vs 0" in out


def test_probe_reports_accuracy_and_neurons(model_dir: Path) -> None:
    out = json.loads(invoke("probe", str(model_dir), "--layer", "1", "--top", "3", "--json"))
    assert out["dataset"] == "sentiment" and out["neuron_hook"] == "blocks.1.mlp.hook_post"
    assert len(out["neurons"]) == 3 and out["neurons"][0]["name"].startswith("L1N")
    assert 0 <= out["probe"]["metrics"]["test"]["accuracy"] <= 1
    aucs = [abs(n["auc"] - 0.5) for n in out["neurons"]]
    assert aucs == sorted(aucs, reverse=True)
    text = invoke("probe", str(model_dir), "--layer", "0", "--positions", "last")
    assert "test accuracy" in text and "largest on" in text and "lmscope neurons" in text


def test_probe_shows_corpus_contexts(model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(sentiment().texts) * 3)
    args = ["--layer", "1", "--top", "2", "--contexts", "2", "--corpus", str(corpus)]
    out = json.loads(invoke("probe", str(model_dir), *args, "--max-tokens", "256", "--json"))
    top = [n["name"] for n in out["neurons"]]
    assert list(out["contexts"]) == top
    for name in top:
        found = out["contexts"][name]
        assert len(found) == 2 and found[0]["activation"] >= found[1]["activation"]
        assert "[[" in found[0]["highlighted"]


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("steer", ["--layer", "0", "--prompt", "I", "--positive", "Love"], "give both --positive"),
        ("steer", ["--layer", "0", "--prompt", "I", "--positions", "old"], "--positions 'old'"),
        ("steer", ["--layer", "0", "--prompt", "I", "--plot", "x.png"], "give --targets too"),
        ("steer", ["--layer", "0", "--prompt", "I", "--targets", "love"], "single token"),
        ("steer", ["--layer", "9", "--prompt", "I"], "layer 9 does not exist"),
        ("probe", ["--layer", "0", "--dataset", "sentimen"], "Did you mean 'sentiment'"),
    ],
)
def test_errors_are_one_line(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(sys, "argv", ["lmscope", command, str(model_dir), *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.out.startswith("error: ") and err.out.count("\n") == 1
    assert re.search(re.escape(message), err.out)
