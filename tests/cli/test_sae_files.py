"""`lmscope sae info | convert` on an SAE trained here, in both formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.sae import build_sae, load_sae
from lmscope.sae.trainer import train_sae

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sae_files") / "sae"
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(64, 8, generator=gen) for _ in range(4)]
    sae = build_sae(d_in=8, d_sae=32, arch="topk", k=3, hook_name="blocks.0.hook_resid_post")
    train_sae(sae, data, out=out, lr=1e-2, log_every=2)
    return out


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["sae", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_info_reports_config_and_training_metrics(trained: Path) -> None:
    data = json.loads(invoke("info", str(trained), "--json"))
    assert data["format"] == "lmscope" and data["class"] == "TopKSAE"
    assert data["config"]["k"] == 3 and data["config"]["hook_name"] == "blocks.0.hook_resid_post"
    assert data["metrics"]["steps"] == 4 and data["metrics"]["l0"] <= 3
    assert data["density"]["dead_fraction"] < 0.5  # the density of the last window
    assert data["decoder_norm"]["min"] == pytest.approx(1.0, abs=1e-4)  # TopK: unit rows
    text = invoke("info", str(trained))
    assert "TopKSAE" in text and "blocks.0.hook_resid_post" in text and "fvu" in text


def test_convert_to_saelens_and_back(trained: Path, tmp_path: Path) -> None:
    invoke("convert", str(trained), str(tmp_path / "sl"), "--to", "saelens")
    assert (tmp_path / "sl" / "cfg.json").is_file()
    assert json.loads(invoke("info", str(tmp_path / "sl"), "--json"))["format"] == "saelens"
    invoke("convert", str(tmp_path / "sl"), str(tmp_path / "lm"), "--to", "lmscope")
    x = torch.randn(5, 8)
    assert torch.allclose(load_sae(tmp_path / "lm")(x), load_sae(trained)(x), atol=1e-6)


def test_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    monkeypatch.setattr(sys, "argv", ["lmscope", "sae", "info", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert "is not an SAE directory" in out and "notes.txt" in out
