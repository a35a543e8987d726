"""`lmscope explain`: worked examples and token traces from the command line."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.config import ModelConfig
from lmscope.explain import render_examples, worked_examples
from lmscope.model import build_model
from tests.conftest import small

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["explain", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run the real entry point (which turns LmscopeError into exit code 2)."""
    monkeypatch.setattr(sys, "argv", ["lmscope", "explain", *args])
    # A wide console, so that one message is one line (rich wraps at 80 columns here).
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


@pytest.fixture
def tiny_config(tmp_path: object) -> tuple[str, ModelConfig]:
    cfg = small("gpt2-small", vocab_size=300, n_layers=1)
    path = tmp_path / "cfg.json"  # type: ignore[operator]
    cfg.to_json(path)
    return str(path), cfg


def test_default_prints_every_example_with_the_documents_figures() -> None:
    out = invoke()
    for i in range(1, 8):
        assert f"E{i} " in out
    assert out.count("document says") >= 6
    assert "0.173790" in out and "[0.157, 0.197, 0.176, 0.185, 0.192]" in out  # E3
    assert "3.339523" in out and "y = 3x" in out  # E4
    assert "1.620000" in out  # E5
    assert "1.120000" in out and "1.030000" in out  # E7


def test_json_gives_the_numbers() -> None:
    data = json.loads(invoke("--json"))
    assert [e["id"] for e in data["examples"]] == [f"E{i}" for i in range(1, 8)]
    e3 = data["examples"][2]
    arrays = {a["name"]: a["values"] for s in e3["steps"] for a in s["arrays"]}
    assert arrays["softmax"] == pytest.approx(
        [0.173790, 0.217641, 0.194483, 0.204455, 0.209631], abs=1e-6
    )
    assert e3["discrepancies"][0]["document_value"] == [0.157, 0.197, 0.176, 0.185, 0.192]


def test_one_example_as_json() -> None:
    data = json.loads(invoke("--example", "E3", "--json"))
    (e3,) = data["examples"]
    arrays = {a["name"]: a["values"] for s in e3["steps"] for a in s["arrays"]}
    assert arrays["z_sat"] == pytest.approx([0.332049, 0.280613, 0.239698, 0.335829], abs=1e-6)


def test_one_example_rendered() -> None:
    out = invoke("--example", "e4")
    assert "E4 " in out and "E3 " not in out and "0.669762" in out


def test_trace_of_a_config_matches_the_model(tiny_config: tuple[str, ModelConfig]) -> None:
    path, cfg = tiny_config
    data = json.loads(
        invoke("--config", path, "--text", "Hi cat", "--position", "2", "--head", "1", "--json")
    )
    assert data["tokens"] == list(b"Hi cat") and data["labels"][2] == "' '"
    assert data["position"] == 2 and data["layers"][0]["attention"]["head"] == 1
    # The same seed builds the same model: the trace's top prediction is its argmax.
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        logits = model(torch.tensor([list(b"Hi cat")]))[0, 2]
    assert data["predictions"][0]["token"] == int(logits.argmax())
    assert data["predictions"][0]["logit"] == pytest.approx(float(logits.max()), abs=1e-5)


def test_trace_rendered_from_tokens(tiny_config: tuple[str, ModelConfig]) -> None:
    out = invoke("--config", tiny_config[0], "--tokens", "1,2,3")
    assert "layer 0" in out and "top predictions" in out and "resid_post" in out


def test_trace_of_a_saved_model(tmp_path: object) -> None:
    model = build_model(small("gpt2-small", n_layers=1), seed=3).eval()
    model.save(tmp_path)  # type: ignore[arg-type]
    data = json.loads(invoke("--model", str(tmp_path), "--tokens", "4,5,6", "--json"))
    with torch.no_grad():
        logits = model(torch.tensor([[4, 5, 6]]))[0, -1]
    assert data["predictions"][0]["token"] == int(logits.argmax())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--example", "E9"], "no worked example 'E9'"),
        (["--preset", "shakespeare-char", "--text", "hi"], "use --tokens"),
        (["--preset", "shakespeare-char", "--tokens", "1,65"], "token id 65 is outside"),
        (["--preset", "shakespeare-char", "--tokens", "1,x"], "comma-separated integers"),
        (["--preset", "shakespeare-char", "--tokens", "1", "--head", "6"], "head 6"),
        (["--text", "hi"], "--text applies to tracing a model"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    code, out = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert message in out
    assert len(out.strip().splitlines()) == 1 and out.startswith("error:")


def test_examples_fit_80_columns() -> None:
    console = Console(width=80, record=True, file=io.StringIO())
    render_examples(worked_examples(), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    # Numbers are whole, not wrapped: the widest rows keep all their columns.
    assert "softmax   0.173790   0.217641   0.194483   0.204455   0.209631" in text
