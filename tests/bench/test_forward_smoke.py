"""Smoke test of the forward-throughput benchmark (bench/forward.py) at its --quick shape."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "forward.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_forward", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run with every variant (autocast included), also written as JSON."""
    out = tmp_path_factory.mktemp("bench") / "forward.json"
    results = load_script().main(["--quick", "--autocast", "--json", str(out)])
    assert json.loads(out.read_text())["variants"].keys() == results["variants"].keys()
    return results


def test_every_variant_is_measured(results: dict) -> None:
    assert set(results["variants"]) == {
        "hf fp32",
        "lmscope fp32",
        "lmscope fp32 explicit",
        "hf bf16",
        "lmscope bf16",
        "hf bf16 autocast",
        "lmscope bf16 autocast",
    }
    for name, row in results["variants"].items():
        assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"]), name
        assert row["gflops"] > 0 and row["peak_fraction"] > 0, name
        assert row["ratio_to_hf"] > 0, name
    for hf in ("hf fp32", "hf bf16", "hf bf16 autocast"):  # each baseline is its own 1.0
        assert results["variants"][hf]["ratio_to_hf"] == 1.0


def test_paths_agree_and_peaks_are_measured(results: dict) -> None:
    assert results["sdpa_vs_explicit_max_abs_diff"] <= 1e-4
    assert results["explicit_over_sdpa"] > 0
    assert results["peak_gflops"]["fp32"] > 0 and results["peak_gflops"]["bf16"] > 0
    assert set(results["bf16_matmul_gflops_by_layout"]) == {"nn", "nt", "tn"}
    assert results["unembed_padding"]["identical"] == 1.0
    assert math.isfinite(results["bf16_vs_fp32_max_abs_diff"])
    assert results["machine"]["cores"] and results["machine"]["torch"]


def test_round_robin_keeps_each_result_until_its_next_call_when_asked() -> None:
    """`hold_results` as a loop rebinding its variable: the previous result of a variant
    is alive during its next call (and only then freed); without it, none is kept."""
    import weakref

    interleaved = load_script().interleaved

    class Result:
        pass

    for hold in (True, False):
        alive: list[int] = []
        refs: list[weakref.ref] = []

        def call(alive: list[int] = alive, refs: list[weakref.ref] = refs) -> Result:
            alive.append(sum(r() is not None for r in refs))
            result = Result()
            refs.append(weakref.ref(result))
            return result

        usage: dict[str, list[dict[str, float]]] = {}
        times = interleaved({"a": call}, repeats=3, warmup=2, usage=usage, hold_results=hold)
        assert len(times["a"]) == 3 and len(usage["a"]) == 3
        assert {"sys_s", "minor_faults"} <= usage["a"][0].keys()
        assert alive == ([0, 1, 1, 1, 1] if hold else [0, 0, 0, 0, 0])
