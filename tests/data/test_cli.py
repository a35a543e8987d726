"""`lmscope data prepare / info`: a thin wrapper, a summary, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.data import TokenData

runner = CliRunner()
TEXT = "".join(f"Speaker {i}:\nWhat light through yonder window breaks?\n\n" for i in range(100))


def test_prepare_writes_data_and_prints_a_summary(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(TEXT)
    out = tmp_path / "out"
    args = ["data", "prepare", "--data", str(tmp_path / "a.txt"), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = TokenData(out)
    assert data.n_tokens("train") == int(len(TEXT) * 0.9)
    assert f"{data.n_tokens('train'):,}" in result.output and "uint16" in result.output
    info = runner.invoke(app, ["data", "info", str(out), "--json"])
    assert json.loads(info.output)["splits"]["val"]["tokens"] == data.n_tokens("val")


def test_prepare_with_bpe_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(TEXT)
    out = tmp_path / "out"
    args = ["data", "prepare", "--data", str(tmp_path / "a.txt"), "--out", str(out)]
    opts = ["--tokenizer", "bpe", "--vocab-size", "300", "--val-fraction", "0.2", "--json"]
    result = runner.invoke(app, [*args, *opts])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["meta"]["tokenizer"]["kind"] == "bpe"
    assert report["meta"]["vocab_size"] == 300 and report["tokens_per_second"] > 0
    data = TokenData(out)
    train, val = (data.tokenizer.decode(data.split(s)) for s in ("train", "val"))
    assert train + val == TEXT and len(val) > 0  # the val split is the end of the text


def test_errors_print_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty.txt").write_text("")
    args = ["lmscope", "data", "prepare", "--data", str(tmp_path / "empty.txt"), "--out", "x"]
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 2
    assert out.count("\n") == 1 and "empty.txt is empty (0 bytes)" in out
