"""`lmscope generate` and `lmscope chat` on a tiny model saved with a character tokenizer."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lmscope
from lmscope.cli import app, main
from lmscope.generate import find_model_dir, generate
from tests.conftest import small

runner = CliRunner()
#: The tokenizer's characters (the plain chat transcript needs "User:" and "Assistant:").
TEXT = "User: the quick brown fox jumps over the lazy dog.\nAssistant: ok\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training-run-like directory: RUN/model holds the model and its tokenizer."""
    tokenizers = pytest.importorskip(
        "lmscope.tokenizers", reason="lmscope.tokenizers (the tokenizer task) is not there yet"
    )
    tok = tokenizers.CharTokenizer.from_text(TEXT)
    cfg = small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.2, tie_embeddings=False)
    run = tmp_path_factory.mktemp("run")
    lmscope.build_model(cfg, seed=0).save(run / "model")
    tok.save(run / "model")
    return run


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def reference(run: Path, prompt: str, **kwargs: object) -> str:
    """The library call the command wraps."""
    from lmscope.tokenizers import load_tokenizer

    tok = load_tokenizer(run / "model")
    model = lmscope.load(run / "model")
    texts = generate(model, prompt, tokenizer=tok, **kwargs).texts
    assert texts is not None
    return texts[0]


def test_generate_streams_what_the_library_returns(model_dir: Path) -> None:
    out = invoke(
        "generate", str(model_dir), "--prompt", "the ", "--max-new-tokens", "20", "--seed", "3"
    )
    expected = reference(model_dir, "the ", max_new_tokens=20, temperature=0.8, seed=3)
    assert len(expected) == 20
    assert out.startswith("the " + expected + "\n")
    assert "20 new tokens" in out and "finished: length" in out


def test_generate_json_with_stop_and_samples(model_dir: Path) -> None:
    args = ["--prompt", "fox", "--max-new-tokens", "30", "--temperature", "1.0", "--seed", "1"]
    free = json.loads(invoke("generate", str(model_dir), *args, "--num-samples", "2", "--json"))
    assert [s["finish_reason"] for s in free["samples"]] == ["length", "length"]
    first = free["samples"][0]["text"]
    assert len(first) == 30 and first != free["samples"][1]["text"]
    stop = first[10:12]
    stopped = json.loads(
        invoke(
            "generate",
            str(model_dir),
            *args,
            "--num-samples",
            "2",
            "--stop",
            stop,
            "--stop",
            "zzz",
            "--json",
        )
    )
    assert stopped["samples"][0]["text"] == first[: first.find(stop)]
    assert stopped["samples"][0]["finish_reason"] == "stop"
    assert stopped["new_tokens_total"] <= 60 and stopped["tokens_per_second"] > 0


def test_generate_from_token_ids_and_several_samples_print_each(model_dir: Path) -> None:
    out = invoke(
        "generate",
        str(model_dir / "model"),
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--num-samples",
        "2",
    )
    assert out.count("sample 1/2 (length)") == 1 and out.count("sample 2/2 (length)") == 1
    model = lmscope.load(model_dir / "model")
    from lmscope.tokenizers import load_tokenizer

    text = generate(
        model, [[1, 2, 3]], max_new_tokens=5, tokenizer=load_tokenizer(model_dir / "model")
    ).texts[0]
    assert out.count(f"1,2,3{text}\n") == 2  # greedy: both samples alike


def test_chat_answers_each_line_until_exit(model_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["chat", str(model_dir), "--max-new-tokens", "8", "--seed", "0"],
        input="the fox\n\nover\nexit\nnever read\n",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("model> ") == 2  # the empty line is skipped; exit quits


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "the", "--max-new-tokens", "500", "--no-slide"], "max_new_tokens=500 does"),
        (["--prompt", "the", "--temperature", "-1"], "temperature=-1.0 must be >= 0"),
        (["--prompt", "the", "--tokens", "1"], "either --prompt .* or --tokens"),
        (["--tokens", "1,x"], "give integer token ids"),
        (["--prompt", "the", "--max-new-tokens", "5"], None),
        (["--prompt", "the", "--max-new-tokens", "500", "--seed", "0"], None),  # slides
    ],
)
def test_errors_are_one_line(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str | None,
) -> None:
    monkeypatch.setattr(sys, "argv", ["lmscope", "generate", str(model_dir), *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr()
    if message is None:  # the control: a valid command succeeds
        assert exit_info.value.code == 0 and err.out.startswith("the")
        return
    assert exit_info.value.code == 2
    assert err.out.startswith("error: ") and err.out.count("\n") == 1
    assert re.search(message, err.out)


def test_model_dir_is_found_in_runs_and_checkpoints(tmp_path: Path) -> None:
    model = lmscope.build_model(small("gpt2-small"), seed=0)
    model.save(tmp_path / "plain")
    assert find_model_dir(tmp_path / "plain") == tmp_path / "plain"
    model.save(tmp_path / "run" / "model")
    assert find_model_dir(tmp_path / "run") == tmp_path / "run" / "model"
    ckpt = tmp_path / "training" / "checkpoints"
    model.save(ckpt / "step-0000010")
    (ckpt / "index.json").write_text(json.dumps({"latest": "step-0000010"}))
    assert find_model_dir(tmp_path / "training") == ckpt / "step-0000010"
    with pytest.raises(lmscope.LmscopeError, match=r"holds no model: expected config\.json"):
        find_model_dir(tmp_path)
    with pytest.raises(lmscope.LmscopeError, match="does not exist"):
        find_model_dir(tmp_path / "missing")
