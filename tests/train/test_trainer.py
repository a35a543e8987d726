"""The training loop end to end: overfitting, exact resume, objectives, run directories."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lmscope import LmscopeError, load
from lmscope.train import TrainConfig, Trainer, train

TEXT = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date;\n"
) * 40

TINY = ["d_model=32", "n_layers=2", "n_heads=2", "max_seq_len=32", "dropout=0.0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "sonnet.txt"
    path.write_text(TEXT)
    return path


def _cfg(corpus: Path, **changes: object) -> TrainConfig:
    settings = {
        "data": str(corpus),
        "batch_size": 8,
        "block_size": 32,
        "max_steps": 12,
        "warmup_steps": 2,
        "eval_every": 6,
        "eval_batches": 2,
        "log_every": 1,
        "lr": 3e-3,
        **changes,
    }
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x.get("loss", x.get("val_loss"))) for x in lines]


def test_a_tiny_model_overfits_a_small_text(corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(corpus, max_steps=300, eval_every=300, lr=1e-2, warmup_steps=10, log_every=50)
    result = train("gpt2-small", cfg, out=tmp_path / "run", overrides=TINY, show_progress=False)
    assert result.steps == 300
    assert result.train_loss is not None and result.train_loss < 0.3  # from ln(~30) = 3.4
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_interrupted_and_resumed_run_is_bit_identical(corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(corpus, max_steps=12, eval_every=4)
    straight = train("gpt2-small", cfg, out=tmp_path / "a", overrides=TINY, show_progress=False)

    def stop_at_7(trainer: Trainer) -> None:
        if trainer.step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: finish the step, checkpoint

    first = train(
        "gpt2-small",
        cfg,
        out=tmp_path / "b",
        overrides=TINY,
        show_progress=False,
        on_step=stop_at_7,
    )
    assert first.interrupted and first.steps == 7
    second = train("gpt2-small", cfg, out=tmp_path / "b", overrides=TINY, show_progress=False)
    assert second.steps == straight.steps == 12 and not second.interrupted
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # every logged number
    a, b = load(straight.model_dir), load(second.model_dir)  # type: ignore[arg-type]
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_finished_run_is_kept_and_a_new_setting_is_refused(corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(corpus, max_steps=4, eval_every=2)
    train("gpt2-small", cfg, out=tmp_path / "r", overrides=TINY, show_progress=False)
    before = _losses(tmp_path / "r")
    again = train("gpt2-small", cfg, out=tmp_path / "r", overrides=TINY, show_progress=False)
    assert again.steps == 4 and _losses(tmp_path / "r") == before
    with pytest.raises(LmscopeError, match=r"cannot resume with different training settings \(lr"):
        train("gpt2-small", _cfg(corpus, max_steps=4, lr=1e-4), out=tmp_path / "r", overrides=TINY)
    longer = train(  # stop criteria may change: continue to 6 steps
        "gpt2-small",
        _cfg(corpus, max_steps=6, eval_every=2),
        out=tmp_path / "r",
        overrides=TINY,
        show_progress=False,
    )
    assert longer.steps == 6
    with pytest.raises(LmscopeError, match="already holds a run"):
        train("gpt2-small", cfg, out=tmp_path / "r", overrides=TINY, resume=False)


def test_gradient_accumulation_matches_the_full_batch(corpus: Path, tmp_path: Path) -> None:
    one = train(
        "gpt2-small",
        _cfg(corpus, max_steps=3),
        out=tmp_path / "one",
        overrides=TINY,
        show_progress=False,
    )
    four = train(
        "gpt2-small",
        _cfg(corpus, max_steps=3, grad_accum=4),
        out=tmp_path / "four",
        overrides=TINY,
        show_progress=False,
    )
    for (s1, l1), (s2, l2) in zip(
        _losses(tmp_path / "one"), _losses(tmp_path / "four"), strict=True
    ):
        assert s1 == s2 and abs(l1 - l2) < 1e-5
    assert one.steps == four.steps


@pytest.mark.parametrize(
    ("preset", "objective"), [("bert-base", "masked-lm"), ("t5-small", "span-corruption")]
)
def test_encoder_and_encoder_decoder_objectives_learn(
    preset: str, objective: str, corpus: Path, tmp_path: Path
) -> None:
    overrides = (
        [*TINY, "n_decoder_layers=2"] if preset == "t5-small" else [*TINY, "n_token_types=0"]
    )
    overrides += ["d_head=16", "d_mlp=64"]
    cfg = _cfg(corpus, max_steps=40, eval_every=40, log_every=40)
    result = train(preset, cfg, out=tmp_path / preset, overrides=overrides, show_progress=False)
    spec = json.loads((tmp_path / preset / "run.json").read_text())
    assert spec["objective"]["name"] == objective
    losses = [loss for _, loss in _losses(tmp_path / preset)]
    assert result.val_loss is not None and result.val_loss < losses[0] - 0.5  # vs untrained


def test_run_directory_layout(corpus: Path, tmp_path: Path) -> None:
    result = train(
        "gpt2-small",
        _cfg(corpus, max_steps=2, eval_every=2),
        out=tmp_path / "x",
        overrides=TINY,
        show_progress=False,
    )
    run = tmp_path / "x"
    spec = json.loads((run / "run.json").read_text())
    assert spec["train"]["max_steps"] == 2 and spec["model"]["d_model"] == 32
    from lmscope.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(result.model_dir)  # the model directory is self-contained
    assert tokenizer.decode(tokenizer.encode("summer's day")) == "summer's day"
    assert load(result.model_dir).cfg.vocab_size == tokenizer.vocab_size  # type: ignore[arg-type]


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_only_while_it_runs(
    corpus: Path, tmp_path: Path, keep: bool
) -> None:
    from lmscope import allocator

    if not allocator.allocator_tunable():
        pytest.skip("the allocator can only be tuned under glibc")
    seen: list[bool] = []
    cfg = _cfg(corpus, max_steps=2, eval_every=2, keep_freed_memory=keep)
    train(
        "gpt2-small",
        cfg,
        out=tmp_path / "run",
        overrides=TINY,
        show_progress=False,
        on_step=lambda trainer: seen.append(allocator.keeping_freed_memory()),
    )
    assert seen == [keep, keep]
    assert not allocator.keeping_freed_memory()
