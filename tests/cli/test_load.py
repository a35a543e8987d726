"""`lmscope load`: a named model, a .gguf file or a directory -> config, tokenizer, a check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from tests.io.gguf.synthetic import tiny_llama_gguf, trained_tokenizer_metadata

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama GGUF with a trained byte-level tokenizer and a chat template."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    meta = trained_tokenizer_metadata("gpt-2", vocab_size=300)
    tiny_llama_gguf(path, tokenizer=meta, vocab_size=len(meta["tokenizer.ggml.tokens"]))
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["load", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_json_report(tiny: Path) -> None:
    data = json.loads(invoke(str(tiny), "--json", "--max-new-tokens", "3"))
    assert data["format"] == "gguf" and data["path"] == str(tiny)
    assert data["config"]["n_layers"] == 2 and data["config"]["n_kv_heads"] == 2
    assert data["params"] > 0 and data["dtype"] == "float32"
    assert data["tokenizer"]["roles"]["eos"] == "<|endoftext|>"
    assert data["tokenizer"]["chat_template"] is True
    check = data["check"]
    assert check["chat"] and check["prompt"].endswith("<|endoftext|>assistant: ")
    assert check["asked"] == "What is the capital of France?"
    assert 1 <= len(check["new_tokens"]) <= 3


def test_human_report_and_options(tiny: Path) -> None:
    out = invoke(str(tiny), "--dtype", "bfloat16", "--prompt", "Hello there")
    assert "tiny-llama from" in out and "2 layers" in out and "in bfloat16" in out
    assert "chat template: yes" in out and "check (chat, greedy): 'Hello there' ->" in out
    assert "check" not in json.loads(invoke(str(tiny), "--no-check", "--json"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["smolm2"], "error: 'smolm2' is not a named real model; known: smollm2, minilm. "
                     "Did you mean 'smollm2'?"),
        (["x.gguf", "--dtype", "float64"], "error: --dtype 'float64' is not one of"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny: Path,
    args: list[str],
    message: str,
) -> None:
    args = [str(tiny) if a == "x.gguf" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["lmscope", "load", *args])
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 2
    assert out.strip().startswith(message) and out.count("\n") == 1
