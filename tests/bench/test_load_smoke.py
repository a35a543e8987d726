"""Smoke test of the safetensors loading benchmark (bench/load.py) at its --quick size."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run (toy Llama, one round, each load in a fresh process), as JSON too."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "load.json"
    results = load_script().main(["--quick", "--dir", str(tmp / "llama"), "--json", str(out)])
    assert json.loads(out.read_text())["loads"].keys() == results["loads"].keys()
    return results


def test_both_loaders_are_measured_in_fresh_processes(results: dict) -> None:
    weights = results["checkpoint"]["weight_bytes"]
    assert weights == 4 * results["loads"]["lmscope"]["params"]  # fp32, untied
    for kind in ("lmscope", "hf"):
        row = results["loads"][kind]
        (report,) = row["rounds"]
        assert 0 < report["seconds"] < 60 and 0 < report["first_forward_s"] < 60, kind
        assert report["all_materialised"] and not report["training"], kind
        assert report["dtype"] == "float32" and report["params"] == row["params"], kind
        # Peak RSS counts from process start: it includes the baseline and only grows.
        assert 0 < report["baseline_rss"] <= report["peak_rss"] <= report["peak_rss_with_forward"]
        assert row["peak_over_baseline_per_weight_byte"] == pytest.approx(
            row["peak_over_baseline"] / weights
        )
    ratio = results["load_ratio_hf_over_lmscope"]
    assert math.isfinite(ratio) and ratio > 0
    assert set(results["targets_met"]) == {"peak RSS <= 1.3 x weights", "load ratio >= 1.0"}


def test_logits_agree_and_throughput_is_measured(results: dict) -> None:
    forward = results["forward"]
    assert set(forward["parity_max_abs_diff"]) == {"1x32", "2x16"}
    assert all(d <= 1e-4 for d in forward["parity_max_abs_diff"].values())
    assert set(forward["variants"]) == {"hf 1x32", "lmscope 1x32", "hf 2x16", "lmscope 2x16"}
    for name, row in forward["variants"].items():
        assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"]), name
    assert all(r > 0 for r in forward["ratio_lmscope_over_hf"].values())


def test_checkpoint_is_reused(results: dict, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    script.ensure_checkpoint(Path(results["checkpoint"]["dir"]), script.LLAMA_QUICK, print)
    assert "reusing" in capsys.readouterr().out
