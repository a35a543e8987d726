"""`lmscope heads` and `lmscope attention` on the hand-built induction model."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.model import build_model
from lmscope.tokenizers.char import CharTokenizer
from tests.conftest import small
from tests.interpret.induction_model import DUPLICATE, FIRST, INDUCTION, PREVIOUS, induction_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(induction_model().save(tmp_path_factory.mktemp("induction") / "model"))


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real entry point, which prints an LmscopeError as one line and exits with 2."""
    monkeypatch.setattr(sys, "argv", ["lmscope", *args])
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


def test_heads_json_names_each_planted_head_first(model_dir):
    data = json.loads(invoke("heads", model_dir, "--seq-len", "16", "--batch", "4", "--json"))
    planted = {
        "previous_token": PREVIOUS,
        "duplicate_token": DUPLICATE,
        "induction": INDUCTION,
        "first_token": FIRST,
    }
    for name, (layer, head) in planted.items():
        best = data["top"][name][0]
        assert (best["layer"], best["head"]) == (layer, head) and best["score"] >= 0.9
    assert data["induction_loss"]["gap"] > 5
    assert data["settings"] == {
        "tokens": "repeated random", "seq_len": 16, "batch": 4, "seed": 0, "bos": None, "eos": None,
    }  # fmt: skip


def test_heads_table_and_plot(model_dir, tmp_path):
    out = invoke(
        "heads", model_dir, "--seq-len", "16", "--detectors", "induction,previous_token",
        "--top", "2", "--plot", str(tmp_path / "h.png"),
    )  # fmt: skip
    assert "│ 1 │ L1.H0  0.9" in out and "L0.H0  1.000" in out and "duplicate" not in out
    assert "gap" in out and "R + R" in out
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_json_is_the_previous_token_pattern(model_dir):
    data = json.loads(
        invoke(
            "attention", model_dir, "--tokens", "3,1,4,1,5", "--layer", "0", "--head", "0", "--json"
        )
    )
    rows = data["pattern"]
    assert [max(range(5), key=row.__getitem__) for row in rows] == [0, 0, 1, 2, 3]
    assert data["labels"] == ["3", "1", "4", "1", "5"] and data["layer"] == 0


def test_attention_table_with_text_and_plot(tmp_path):
    text = "the cat sat on the mat"
    tokenizer = CharTokenizer.from_text(text)
    directory = tmp_path / "char"
    build_model(small("gpt2-small", vocab_size=tokenizer.vocab_size), seed=0).save(directory)
    tokenizer.save(directory)
    out = invoke(
        "attention", str(directory), "--text", text, "--layer", "-1", "--head", "2",
        "--max-tokens", "8", "--plot", str(tmp_path / "a.png"),
    )  # fmt: skip
    assert "layer 1 head 2" in out and "last 8 of 22 tokens" in " ".join(out.split())
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["heads", "{dir}", "--detectors", "inductoin"], "unknown head detector 'inductoin'"),
        (["heads", "{dir}", "--seq-len", "30"], "exceed this model's max_seq_len"),
        (["attention", "{dir}", "--tokens", "1,2", "--layer", "2", "--head", "0"], "layer 2 does"),
        (["attention", "{dir}", "--tokens", "1,2", "--layer", "0", "--head", "9"], "head 9 does"),
        (["attention", "{dir}", "--text", "hi", "--layer", "0", "--head", "0"], "no tokenizer"),
        (["attention", "{dir}", "--layer", "0", "--head", "0"], "--text or as --tokens"),
    ],
)
def test_bad_input_exits_with_one_line(monkeypatch, capsys, model_dir, args, message):
    code, out = run_main(monkeypatch, capsys, *[a.format(dir=model_dir) for a in args])
    assert code == 2 and message in out and out.count("\n") == 1
