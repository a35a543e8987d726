"""Smoke test of the run_with_cache benchmark (bench/run_with_cache.py) at its --quick shape."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformer_lens")
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "run_with_cache.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_run_with_cache", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run (its checkpoint in a temporary directory), also written as JSON."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "run_with_cache.json"
    args = ["--quick", "--repeats", "2", "--dir", str(tmp / "gpt2"), "--json", str(out)]
    results = load_script().main(args)
    assert json.loads(out.read_text())["median_s"].keys() == results["median_s"].keys()
    return results


def test_every_variant_is_timed_and_measured(results: dict) -> None:
    module = load_script()
    timed = {"hf forward", *module.LMSCOPE_VARIANTS, *module.TL_VARIANTS}
    assert set(results["median_s"]) == timed
    for name, median in results["median_s"].items():
        assert median > 0 and math.isfinite(median), name
        assert len(results["times_s"][name]) == 2
    assert set(results["memory"]) == timed - {"hf forward"}
    memory = results["memory"]
    assert memory["lmscope forward"]["cached_bytes"] == 0
    # Memory follows what was asked: all hooks > the residual stream > one hook.
    assert (
        memory["lmscope cache all"]["cached_bytes"]
        > memory["lmscope cache resid"]["cached_bytes"]
        > memory["lmscope cache one"]["cached_bytes"]
        > 0
    )
    # Same names, same tensors: the same bytes as TransformerLens for the residual stream.
    assert memory["lmscope cache resid"]["cached_bytes"] <= memory["tl cache resid"]["cached_bytes"]


def test_checks_ratios_and_targets_are_reported(results: dict) -> None:
    assert results["checks"]["cache_max_abs_diff"] <= 1e-4
    assert results["checks"]["lmscope_vs_hf_logits"] <= 1e-3
    for key in ("all_over_forward", "one_over_forward", "speedup_over_tl"):
        assert results["ratios"][key] > 0
    assert len(results["targets_met"]) >= 2
    assert results["names"]["resid"] == 3 * results["shape"]["n_layer"]
