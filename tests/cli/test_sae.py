"""`lmscope sae train | eval | features | steer` on a tiny model saved with a char tokenizer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lmscope
from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.sae import load_sae
from lmscope.sae.evaluate import evaluate_sae
from tests.conftest import small
from tests.sae.tiny import char_corpus

runner = CliRunner()
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run (tiny model + tokenizer), a corpus, and an SAE trained on them by the CLI."""
    root = tmp_path_factory.mktemp("sae_cli")
    corpus, tok = char_corpus(root / "plays.txt", 400)
    cfg = small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.2)
    lmscope.build_model(cfg, seed=0).save(root / "run" / "model")
    tok.save(root / "run" / "model")
    out = root / "sae"
    args = ["--hook", HOOK, "--arch", "topk", "-k", "4", "--width", "2x", "--data", str(corpus)]
    args += ["--tokens", "2048", "--batch-size", "256", "--context-size", "32"]
    args += ["--out", str(out), "--cache-dir", str(root / "acts")]
    report = json.loads(invoke("train", str(root / "run"), *args, "--json"))
    return {"root": root, "run": root / "run", "corpus": corpus, "sae": out, "report": report}  # type: ignore[dict-item]


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["sae", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_train_saves_an_sae_that_knows_its_model_and_data(trained: dict) -> None:
    sae = load_sae(trained["sae"])
    assert sae.cfg.arch == "topk" and sae.cfg.k == 4 and sae.d_sae == 64
    assert sae.cfg.hook_name == HOOK and sae.cfg.run == str(trained["run"])
    assert sae.cfg.metadata["data"] == str(trained["corpus"])
    assert sae.cfg.activation_scale is not None  # normalised, factor kept with the SAE
    report = trained["report"]
    assert report["tokens"] >= 2048 and report["steps"] == 8
    assert report["metrics"][HOOK]["l0"] == pytest.approx(4.0, abs=0.5)
    manifest = json.loads((trained["root"] / "acts" / "manifest.json").read_text())
    assert manifest["rows"] == 2048 and list(manifest["hooks"]) == [HOOK]


def test_eval_matches_the_library(trained: dict) -> None:
    out = json.loads(invoke("eval", str(trained["sae"]), "--contexts", "8", "--json"))
    model = lmscope.load(trained["run"] / "model")
    from lmscope.tokenizers import load_tokenizer

    tok = load_tokenizer(trained["run"] / "model")
    expected = evaluate_sae(
        model, load_sae(trained["sae"]), trained["corpus"], tokenizer=tok, context_size=32,
        max_contexts=8,
    )  # fmt: skip
    assert out["loss_recovered"] == pytest.approx(expected.loss_recovered)
    assert out["l0"] == pytest.approx(4.0, abs=0.5) and out["n_tokens"] == 8 * 32
    table = invoke(
        "eval", str(trained["sae"]), "--contexts", "2", "--plot", str(trained["root"] / "d.png")
    )
    assert "loss_recovered" in table and (trained["root"] / "d.png").is_file()


def test_features_search_feature_and_dashboard(trained: dict) -> None:
    html = trained["root"] / "dash.html"
    out = json.loads(
        invoke("features", str(trained["sae"]), "--contexts", "16", "--search", "e",
               "--html", str(html), "--json")
    )  # fmt: skip
    assert html.is_file() and out["html"] == str(html)
    assert all(m["fraction"] >= 0.5 for m in out["search"])
    shown = invoke("features", str(trained["sae"]), "--contexts", "16", "--feature", "3")
    assert "feature 3" in shown and "promotes:" in shown


def test_steer_coefficient_zero_changes_nothing(trained: dict) -> None:
    args = ["steer", str(trained["sae"]), "--feature", "3", "--prompt", "thee ", "--json"]
    zero = json.loads(invoke(*args, "--coef", "0", "--max-new-tokens", "12"))
    assert zero["steered"] == zero["baseline"] and zero["baseline"]
    clamped = json.loads(invoke(*args, "--clamp", "0", "--max-new-tokens", "12"))
    assert clamped["edit"] == "clamp 0"


def test_errors_are_one_line(
    trained: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["lmscope", "sae", "train", str(trained["run"]),
                                      "--hook", "blocks.0.hook_resid_pots", "-k", "4"])  # fmt: skip
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "no hook point named 'blocks.0.hook_resid_pots'" in out.out + out.err
