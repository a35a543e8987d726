"""AdamW groups, the learning-rate schedule and run-setting overrides."""

from __future__ import annotations

import math

import pytest

from lmscope import ConfigError, build_model
from lmscope.train.config import TrainConfig, apply_overrides
from lmscope.train.optim import learning_rate, make_optimizer
from tests.conftest import small


def test_weight_decay_applies_to_matrices_only() -> None:
    model = build_model(small("gpt2-small"))
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way: cos = 0
    assert learning_rate(110, cfg) == pytest.approx(1e-4)
    assert learning_rate(500, cfg) == pytest.approx(1e-4)  # flat after the decay
    mid = learning_rate(35, cfg)
    assert mid == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.25)) * 9e-4)


def test_overrides_reach_model_or_training_settings_and_parse_json() -> None:
    model, train = apply_overrides(
        {"d_model": 64}, {}, ["d_model=128", "lr=3e-4", "sliding_window=null", "data=notes.txt"]
    )
    assert model == {"d_model": 128, "sliding_window": None}
    assert train == {"lr": 3e-4, "data": "notes.txt"}
    with pytest.raises(ConfigError, match="Did you mean 'warmup_steps'"):
        apply_overrides({}, {}, ["warmup_step=10"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, {}, ["lr"])


def test_train_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig.grad_accum = 5 is invalid: must divide"):
        TrainConfig(batch_size=12, grad_accum=5)
    with pytest.raises(ConfigError, match="at least one of max_steps"):
        TrainConfig(max_steps=None)
    with pytest.raises(ConfigError, match=r"TrainConfig.objective = 'mlm'"):
        TrainConfig(objective="mlm")
