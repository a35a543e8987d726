"""Smoke test of the decoding benchmark (bench/generate.py) at its --quick shape."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "generate.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run (one round; bf16 too, it is a separate code path), also as JSON."""
    out = tmp_path_factory.mktemp("bench") / "generate.json"
    args = ["--quick", "--new-tokens", "6", "--rounds", "1", "--bf16-rounds", "1"]
    results = load_script().main([*args, "--json", str(out)])
    assert json.loads(out.read_text())["variants"].keys() == results["variants"].keys()
    return results


def test_same_weights_give_the_same_greedy_tokens(results: dict) -> None:
    assert results["greedy_tokens_agree"] == 6
    assert results["prefill_logits_max_abs_diff"] < 1e-4


def test_every_variant_is_measured(results: dict) -> None:
    assert set(results["variants"]) == {
        "hf fp32",
        "lmscope fp32",
        "lmscope raw loop fp32",
        "weights nt fp32",
        "weights nn fp32",
        "hf bf16",
        "lmscope bf16",
    }
    for name, row in results["variants"].items():
        assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"]), name
    assert results["variants"]["hf fp32"]["ratio_to_hf"] == 1.0
    assert results["ratio_to_hf_fp32"] == results["variants"]["lmscope fp32"]["ratio_to_hf"]
    assert math.isfinite(results["generate_overhead_ms_per_token"])
