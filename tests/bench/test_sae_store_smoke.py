"""Smoke test of the activation-store memory benchmark (bench/sae_store.py) at --quick."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sae_store.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_sae_store", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_serves_every_row_from_a_bounded_buffer(tmp_path: Path) -> None:
    module = load_script()
    results = module.main(["--quick", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["cases"] == results["cases"]
    assert {(c["chars"], c["source"]) for c in results["cases"]} == {
        (n, s) for n in (20_000, 80_000) for s in ("model", "disk")
    }
    for case in results["cases"]:
        # Whole windows of 128 (no special tokens), served in whole batches of 1024.
        assert case["rows"] == case["chars"] // 128 * 128 // 1024 * 1024
        assert case["peak_buffer_rows"] <= module.BUFFER_TOKENS + module.MODEL_BATCH
        assert case["acts_per_s"] > 0
    assert module.bounded([dict(c, peak_above_start_mib=10.0) for c in results["cases"]])
    assert not module.bounded(
        [dict(c, peak_above_start_mib=10.0 if c["chars"] == 20_000 else 40.0)
         for c in results["cases"]]
    )  # fmt: skip
