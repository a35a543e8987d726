"""`lmscope tokenizer train / encode`: thin wrappers that save and show a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lmscope.cli import app
from lmscope.tokenizers import load_tokenizer

runner = CliRunner()


def test_train_saves_a_tokenizer_and_prints_a_sample(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Speak, speak. First Citizen: we are resolved.\n" * 40)
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "280", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "280 tokens" in result.output and "sample:" in result.output
    tok = load_tokenizer(out)
    assert tok.kind == "bpe" and tok.vocab_size == 280

    result = runner.invoke(app, [*args, "--json"])
    data = json.loads(result.output)
    assert data["vocab_size"] == 280
    assert data["sample"]["text"] == "Speak, speak. First Citizen: we are resolved."
    assert tok.decode(data["sample"]["ids"]) == data["sample"]["text"]


def test_train_reads_a_jsonl_field(tmp_path: Path) -> None:
    lines = [json.dumps({"meta": {"text": f"record number {i} says hello"}}) for i in range(50)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    out = tmp_path / "tok"
    data = str(tmp_path / "d.jsonl")
    args = ["tokenizer", "train", "--data", data, "--field", "meta.text", "--vocab-size", "270"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sample"]["text"] == "record number 0 says hello"


def test_encode_shows_ids_and_pieces(tmp_path: Path) -> None:
    from lmscope.tokenizers import CharTokenizer

    CharTokenizer.from_text("abc ").save(tmp_path)
    result = runner.invoke(app, ["tokenizer", "encode", str(tmp_path), "cab a", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ids"] == [3, 1, 2, 0, 1]
    assert data["pieces"] == ["c", "a", "b", " ", "a"]
    assert data["kind"] == "char"
