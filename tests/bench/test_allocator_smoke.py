"""Smoke test of the allocator benchmark (bench/allocator.py) at a toy batch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lmscope.allocator import allocator_tunable

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "allocator.py"


@pytest.mark.skipif(not allocator_tunable(), reason="the allocator can only be tuned under glibc")
def test_both_modes_run_in_fresh_processes_and_report_a_ratio(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_allocator", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out.json"
    results = module.main(["--steps", "2", "--rounds", "1", "--batch", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["default_over_kept"] == results["default_over_kept"] > 0
    assert [len(saved["rows"][m]) for m in ("default", "kept")] == [2, 2]
    assert all(saved[m]["s"] > 0 for m in ("default", "kept"))
