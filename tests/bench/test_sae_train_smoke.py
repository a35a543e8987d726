"""Smoke test of the SAE training benchmark (bench/sae_train.py) at its --quick shape."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sae_train.py"

pytest.importorskip("sae_lens")


def load_script() -> ModuleType:
    """bench/ is scripts, not a package: import the file by path."""
    spec = importlib.util.spec_from_file_location("bench_sae_train", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def results(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One --quick run with two L1 coefficients (the synthetic data cached in a temp dir;
    one thread: the shapes are tiny, and a loaded machine would otherwise thrash)."""
    tmp = tmp_path_factory.mktemp("sae_bench")
    out = tmp / "sae_train.json"
    args = ["--quick", "--rounds", "1", "--threads", "1", "--cache", str(tmp), "--l1", "1", "8"]
    args += ["--json", str(out)]
    results = script.main(args)
    assert json.loads(out.read_text())["variants"].keys() == results["variants"].keys()
    return results


def test_both_libraries_train_every_variant(results: dict) -> None:
    assert set(results["variants"]) == {"topk k=8", "relu-l1 1", "relu-l1 8"}
    for name, row in results["variants"].items():
        for lib in ("lmscope", "saelens"):
            assert row[lib]["acts_per_s"] > 0 and math.isfinite(row[lib]["fvu"]), (name, lib)
        assert row["throughput_ratio"] > 0
    topk = results["variants"]["topk k=8"]
    assert topk["lmscope"]["l0"] <= 8 and topk["saelens"]["l0"] <= 8  # TopK: L0 is k
    assert results["settings"]["d_in"] == 64 and results["machine"]["sae_lens"]


def test_the_synthetic_data_is_structured_and_normalised(
    script: ModuleType, tmp_path: Path
) -> None:
    import torch

    path = script.synthetic(4096, 32, tmp_path / "s.npy")
    data = torch.from_numpy(script.np.load(path))
    assert data.shape == (4096, 32)
    assert float(data.norm(dim=1).mean()) == pytest.approx(32**0.5, rel=0.05)
    # sparse structure: a few directions carry most of the variance (unlike noise)
    centred = data - data.mean(0)
    top = torch.linalg.svdvals(centred)[:8].pow(2).sum() / centred.pow(2).sum()
    assert 0.3 < float(top) < 0.99


def test_fvu_is_interpolated_at_matched_l0(script: ModuleType) -> None:
    curve = [{"l0": 10.0, "fvu": 0.4}, {"l0": 40.0, "fvu": 0.2}]
    assert script.fvu_at_l0(curve, 20.0) == pytest.approx(0.3)
    assert script.fvu_at_l0(curve, 80.0) is None
    assert script.fvu_at_l0([{"l0": 10.0, "fvu": 0.4}], 10.2) == 0.4
