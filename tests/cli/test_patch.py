"""`lmscope patch` on a small saved model with a character tokenizer, and on a preset."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lmscope
from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.interpret.metrics import logit_diff_metric
from lmscope.interpret.patching import activation_patch
from lmscope.tokenizers import load_tokenizer
from lmscope.tokenizers.char import CharTokenizer
from tests.conftest import small

runner = CliRunner()
TEXT = "the cat sat on a mat. a dog ran to the end!"
CLEAN, CORRUPTED = "the cat sat on", "the dog sat on"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = CharTokenizer.from_text(TEXT)
    cfg = small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.15, tie_embeddings=False)
    directory = tmp_path_factory.mktemp("run") / "model"
    lmscope.build_model(cfg, seed=0).save(directory)
    tok.save(directory)
    return directory


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def args(model: Path | str, *extra: str) -> list[str]:
    return [
        "patch", str(model), "--clean", CLEAN, "--corrupted", CORRUPTED,
        "--target", " ", "--baseline", "a", *extra,
    ]  # fmt: skip


def test_json_is_the_grid_the_library_computes(model_dir: Path) -> None:
    data = json.loads(invoke(*args(model_dir, "--json")))
    tok = load_tokenizer(model_dir)
    model = lmscope.load(model_dir).eval()
    metric = logit_diff_metric(tok.encode(" ")[0], tok.encode("a")[0])
    expected = activation_patch(model, tok.encode(CLEAN), tok.encode(CORRUPTED), metric)
    assert data["axes"] == ["layer", "position"] and data["method"] == "exact"
    torch.testing.assert_close(torch.tensor(data["values"]), expected.values, atol=1e-5, rtol=0)
    assert data["labels"][4] == "c/d" and data["clean_metric"] == pytest.approx(
        expected.clean_metric
    )


def test_table_heads_plot_and_attribution(model_dir: Path, tmp_path: Path) -> None:
    out = invoke(*args(model_dir, "--what", "heads", "--plot", str(tmp_path / "heads.png")))
    assert "exact patching of z (denoise)" in out and "largest effects: L" in out
    assert (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"
    by_pos = json.loads(invoke(*args(model_dir, "--what", "heads", "--by-position", "--json")))
    assert by_pos["axes"] == ["layer", "head", "position"]
    noised = json.loads(invoke(*args(model_dir, "--what", "mlp", "--direction", "noise", "--json")))
    assert noised["direction"] == "noise" and noised["values"][0][0] == pytest.approx(1.0, abs=1e-5)
    approx = json.loads(invoke(*args(model_dir, "--method", "attribution", "--json")))
    assert approx["method"] == "attribution" and len(approx["values"]) == 2


def test_a_random_preset_with_gpt2_tokens() -> None:
    clean, corrupted = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
    options = ["--what", "attn", "--method", "attribution", "--json"]
    words = ["--target", " Paris", "--baseline", " Rome", *options]
    data = json.loads(
        invoke("patch", "gpt2-small", "--clean", clean, "--corrupted", corrupted, *words)
    )
    assert data["model"].startswith("gpt2-small (random weights")
    assert len(data["values"]) == 12 and len(data["values"][0]) == len(data["labels"]) == 10
    assert data["labels"][1] == "·E/·Col"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corrupted", "the dog sat on a"], "different lengths.*--clean is 14 tokens"),
        (["--target", "at"], "the target 'at' must be a single token"),
        (["--what", "neurons"], "--what 'neurons' is invalid"),
        (["--method", "linear"], "--method 'linear' is invalid"),
        (["--direction", "up"], "direction 'up' is invalid"),
    ],
)
def test_errors_are_one_line(model_dir, monkeypatch, capsys, extra, message) -> None:
    monkeypatch.setattr(sys, "argv", ["lmscope", *args(model_dir), *extra])
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 2 and out.startswith("error: ") and out.count("\n") == 1
    assert re.search(message, out), out
