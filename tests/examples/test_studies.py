"""The studies in examples/ run end to end at toy size (``--quick``) and report sane numbers."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name: str) -> ModuleType:
    """examples/ is scripts, not a package: import the file by path (with _common beside it)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_main(name: str, argv: list[str]) -> dict[str, Any]:
    """Call study `name`'s ``main(argv)``; restore torch's thread count (``--threads``
    sets it for the whole process) for the tests that follow."""
    threads = torch.get_num_threads()
    try:
        return load_script(name).main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 30,000 characters of varied pseudo-text (no dependence on a shared folder)."""
    rng = random.Random(0)
    words = [
        "thou",
        "art",
        "more",
        "lovely",
        "and",
        "temperate",
        "rough",
        "winds",
        "do",
        "shake",
        "the",
        "buds",
        "of",
        "may",
    ]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(700)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_study(name: str, corpus: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Run study `name` with --quick into `out`; check its report and picture; return numbers."""
    # One thread: the suite may run beside other work on 2 cores, where two threads per
    # process made these small steps several times slower.
    argv = ["--quick", "--data", str(corpus), "--out", str(out), "--no-progress", "--threads", "1"]
    argv += extra
    numbers = run_main(name, argv)
    report = (out / f"{name}.md").read_text()
    assert f"Made by `python examples/{name}.py --quick" in report
    assert "|---|" in report and "![" in report
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    return numbers


def finite(value: float) -> bool:
    """A real, finite float (not nan, not inf)."""
    return isinstance(value, float) and math.isfinite(value)


def test_overfit_study_lowers_the_training_loss(corpus: Path, tmp_path: Path) -> None:
    numbers = run_study("overfit_one_block", corpus, tmp_path)
    assert numbers["final_train_loss"] < numbers["first_train_loss"]
    for key in ("final_train_loss", "final_val_loss", "best_val_loss"):
        assert finite(numbers[key]) and 0 < numbers[key] < 6, key
    for split in ("train", "val"):
        assert 0 <= numbers[split]["accuracy"] <= 1
        assert 0 <= numbers[split]["match"] <= 1


def test_scaling_study_unscaled_scores_are_sqrt_d_head_larger(corpus: Path, tmp_path: Path) -> None:
    numbers = run_study("attention_scaling", corpus, tmp_path)
    assert len(numbers) == 4
    for init in ("std 0.02", "std 1/sqrt(32)"):
        scaled = numbers[f"{init}, 1/sqrt(d_head)"]
        unscaled = numbers[f"{init}, none"]
        # Same seed, same weights before training: the first layer's scores differ by
        # exactly the factor 1/sqrt(32) (later layers see different inputs).
        ratio = (
            unscaled["before"]["score_std_by_layer"][0] / scaled["before"]["score_std_by_layer"][0]
        )
        assert ratio == pytest.approx(math.sqrt(32), rel=1e-3)
        assert unscaled["before"]["entropy"] < scaled["before"]["entropy"]
    for name, run in numbers.items():
        assert finite(run["final_val_loss"]) and finite(run["final_train_loss"]), name
        for stats in (run["before"], run["after"]):
            assert 0 <= stats["entropy"] <= stats["uniform_entropy"] + 1e-5, name
            assert 0 < stats["max_weight"] <= 1, name


def test_positional_study_evaluates_every_scheme_at_twice_the_context(
    corpus: Path, tmp_path: Path
) -> None:
    module = load_script("positional_schemes")
    numbers = run_study("positional_schemes", corpus, tmp_path)
    assert set(numbers) == set(module.SCHEMES)
    for scheme, row in numbers.items():
        assert all(finite(v) for v in row.values()), scheme
        # The 2T mean is the mean of the first T positions and the T past them.
        both = (row["val_loss_at_T"] + row["loss_beyond_T"]) / 2
        assert row["val_loss_at_2T"] == pytest.approx(both, rel=1e-5), scheme


def test_norm_study_covers_each_depth_and_placement(corpus: Path, tmp_path: Path) -> None:
    numbers = run_study("norm_placement", corpus, tmp_path)
    # The grid, plus the deepest post-norm model again with warm-up over half its 20 steps.
    expected = {"pre-1", "post-1", "pre-2", "post-2", "post-2-warmup-10"}
    assert set(numbers) == expected
    for name, row in numbers.items():
        assert finite(row["final_val_loss"]), name
        assert len(row["grad_norms_at_init"]) == int(name.split("-")[1])
        assert all(finite(g) and g > 0 for g in row["grad_norms_at_init"]), name
    # Warm-up changes training, not the initial model.
    long = numbers["post-2-warmup-10"]
    assert long["grad_norms_at_init"] == numbers["post-2"]["grad_norms_at_init"]
    assert long["final_val_loss"] != numbers["post-2"]["final_val_loss"]


def test_default_data_falls_back_to_the_default_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    load_script("overfit_one_block")  # puts examples/ on the path
    import _common as common
    from lmscope.data import default_corpus

    monkeypatch.setattr(common, "TINY_SHAKESPEARE", Path("/nonexistent/tinyshakespeare.txt"))
    assert common.data_spec(None) == default_corpus()
    assert common.data_spec("mine.txt") == "mine.txt"
