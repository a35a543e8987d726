"""The README's promises: the two set-up commands and an up-to-date config table."""

from __future__ import annotations

from pathlib import Path

from lmscope.config import config_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_table_lists_every_field_as_generated() -> None:
    assert config_table_markdown() in README.read_text()


def test_readme_gives_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text


def _python_blocks() -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_quick_tour_runs(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    namespace: dict[str, object] = {}
    exec(compile(_python_blocks()[0], "README.md", "exec"), namespace)
    assert namespace["again"].cfg == namespace["cfg"]  # type: ignore[attr-defined]
    assert len(namespace["patterns"]) == 1  # type: ignore[arg-type]


def test_readme_real_models_tour_runs() -> None:
    """The real-model block runs as written and its comments state what it prints."""
    import pytest

    from lmscope.real_models import RealModelError, resolve_real_model

    try:
        resolve_real_model("smollm2"), resolve_real_model("minilm")
    except RealModelError as exc:
        pytest.skip(f"real models not installed: {exc}")
    namespace: dict[str, object] = {}
    exec(compile(_python_blocks()[1], "README.md", "exec"), namespace)
    assert namespace["out"].texts[0] == " Paris."  # type: ignore[attr-defined]
    sim = namespace["similarity"]
    assert round(float(sim[0, 1]), 2) == 0.62 and round(float(sim[0, 2]), 2) == 0.09  # type: ignore[index]


def test_readme_error_examples_are_the_real_messages() -> None:
    import pytest

    from lmscope import ConfigError, ModelConfig

    with pytest.raises(ConfigError) as first:
        ModelConfig(n_heads=8, n_kv_heads=3, d_model=64)
    with pytest.raises(ConfigError) as second:
        ModelConfig(positional="ropee")
    flat = " ".join(README.read_text().split())
    assert " ".join(str(first.value).split()) in flat
    assert str(second.value).endswith("Did you mean 'rope'?")
    assert str(second.value).startswith("ModelConfig.positional = 'ropee' is invalid: allowed:")
