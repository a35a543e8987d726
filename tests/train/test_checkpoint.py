"""Checkpoints: complete and loadable, pruned to last-N + best, never torn by a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmscope import build_model, load
from lmscope.errors import CheckpointError
from lmscope.train import checkpoint as ckpt
from tests.conftest import small


def _save(run: Path, step: int, val: float | None, keep: int = 2) -> Path:
    model = build_model(small("gpt2-small"))
    state = {"step": step, "rng": torch.get_rng_state()}
    return ckpt.save_checkpoint(
        run, step, model.cfg, model.state_dict(), {"state": {}}, state, val_loss=val, keep_last=keep
    )


def test_checkpoint_is_a_loadable_model_with_trainer_state(tmp_path: Path) -> None:
    path = _save(tmp_path, 5, 2.5)
    assert load(path).cfg.d_model == 32  # a complete model directory
    back = ckpt.load_checkpoint(path)
    assert back.trainer_state["step"] == 5
    assert torch.equal(back.trainer_state["rng"], torch.get_rng_state())
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_keeps_the_last_n_and_the_best(tmp_path: Path) -> None:
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.2)]:
        _save(tmp_path, step, val, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-0000002", "step-0000004", "step-0000005"]
    index = ckpt.read_index(tmp_path)
    assert index["best"] == "step-0000002" and index["best_val_loss"] == 1.0
    assert index["latest"] == "step-0000005"


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    first = _save(tmp_path, 1, 2.0)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, 1.5)
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_checkpoint(first).trainer_state["step"] == 1
    assert not (tmp_path / "checkpoints" / "step-0000002").exists()


def test_a_truncated_trainer_state_is_a_clear_error(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, None)
    state = path / ckpt.TRAINER_STATE
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot read"):
        ckpt.load_checkpoint(path)
