"""Import another bench script by path: bench/ is a folder of scripts, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def sibling(name: str) -> ModuleType:
    """bench/`name`.py imported by path as ``bench_<name>`` (a fresh module each call)."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
