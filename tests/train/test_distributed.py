"""torchrun: 2 gloo processes train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.test_trainer import TEXT

SETTINGS = [
    "d_model=32",
    "n_layers=2",
    "n_heads=2",
    "max_seq_len=32",
    "dropout=0.0",
    "batch_size=8",
    "block_size=32",
    "max_steps=20",
    "warmup_steps=2",
    "eval_every=10",
    "eval_batches=2",
    "log_every=1",
    "lr=3e-3",
]


def _train(run: Path, corpus: Path, processes: int) -> list[dict]:
    launcher = [sys.executable, "-m", "lmscope"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "lmscope",
        ]
    args = ["train", "gpt2-small", "--out", str(run), "--no-progress", "--no-sample"]
    sets = [f"--set={s}" for s in [*SETTINGS, f"data={corpus}"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share two cores
    done = subprocess.run(
        [*launcher, *args, *sets], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    corpus = tmp_path / "sonnet.txt"
    corpus.write_text(TEXT)
    single = _train(tmp_path / "single", corpus, 1)
    double = _train(tmp_path / "ddp", corpus, 2)
    assert len(single) == len(double) and len([x for x in single if "loss" in x]) == 20
    for a, b in zip(single, double, strict=True):
        assert a["step"] == b["step"]
        key = "loss" if "loss" in a else "val_loss"
        assert abs(a[key] - b[key]) <= 1e-4, (a, b)
    train_losses = [x["loss"] for x in single if "loss" in x]
    assert train_losses[-1] < train_losses[0] - 0.5  # it did learn


@pytest.mark.skipif(sys.platform != "linux", reason="gloo FSDP exercised on Linux only")
def test_fsdp_on_two_processes_matches_too(tmp_path: Path) -> None:
    corpus = tmp_path / "sonnet.txt"
    corpus.write_text(TEXT)
    single = _train(tmp_path / "single", corpus, 1)
    SETTINGS.append("fsdp=true")
    try:
        sharded = _train(tmp_path / "fsdp", corpus, 2)
    finally:
        SETTINGS.remove("fsdp=true")
    for a, b in zip(single, sharded, strict=True):
        key = "loss" if "loss" in a else "val_loss"
        assert abs(a[key] - b[key]) <= 1e-4, (a, b)
