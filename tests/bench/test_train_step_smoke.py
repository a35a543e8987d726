"""Smoke test of the training-step benchmark (bench/train_step.py) at its --quick shape.

torch.compile is left out (compiling three models takes minutes even at toy size), and
the peak-memory measurement runs in this process instead of fresh subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def results(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run (one round; bf16 autocast too), also written as JSON."""
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    args = ["--quick", "--rounds", "1", "--bf16-rounds", "1", "--no-memory"]
    results = script.main([*args, "--json", str(out)])
    assert json.loads(out.read_text())["variants"].keys() == results["variants"].keys()
    return results


def test_every_implementation_and_mode_is_measured(script: ModuleType, results: dict) -> None:
    impls = ["lmscope", "hf"] + (["litgpt"] if script.have_litgpt() else [])
    modes = ["fp32", "bf16-autocast"]
    assert set(results["variants"]) == {f"{i} {m}" for i in impls for m in modes}
    for name, row in results["variants"].items():
        assert row["tokens_per_s"] > 0 and math.isfinite(row["tokens_per_s"]), name
        assert row["tokens"] == (2 * 32), name  # quick: batch 2 x 32 in both modes
        assert row["time_over_lmscope"] > 0, name
    for mode in modes:  # lmscope is each mode's own baseline
        assert results["variants"][f"lmscope {mode}"]["time_over_lmscope"] == 1.0
    assert set(results["time_over_lmscope_fp32"]) == set(impls) - {"lmscope"}
    if not script.have_litgpt():
        assert "litgpt" in results["litgpt_note"]


def test_same_weights_give_hf_our_logits(results: dict) -> None:
    assert results["hf_vs_lmscope_logits_max_abs_diff"] < 1e-5
    # Random tokens over 65 ids: every model starts near ln(65) = 4.17.
    for impl, loss in results["initial_loss"].items():
        assert abs(loss - math.log(65)) < 0.2, impl
    # HF holds our weights plus zero biases: exactly its bias count more parameters.
    q = 64  # quick d_model; 2 layers: qkv 3q + out q + fc_in 4q + fc_out q + 2 norms 2q
    assert results["params"]["hf"] - results["params"]["lmscope"] == 2 * 11 * q + q


def test_memory_child_reports_a_training_peak(script: ModuleType) -> None:
    mem = script.memory_child("lmscope", quick=True, batch=2, seq=32, steps=2)
    assert mem["peak_rss_mb"] >= mem["base_rss_mb"] > 0
    assert 0 <= mem["training_peak_mb"] < 1024
    assert len(mem["peak_after_each_step_mb"]) == 2


def test_freed_memory_is_kept_only_for_the_run(script: ModuleType) -> None:
    from lmscope import allocator

    args = ["--quick", "--rounds", "1", "--no-bf16", "--no-memory", "--keep-freed-memory"]
    results = script.main(args)
    assert results["kept_freed_memory"] == allocator.allocator_tunable()
    assert not allocator.keeping_freed_memory()  # released when the run ends
