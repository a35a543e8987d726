"""The SAE training loop: exact resume, several SAEs in one pass, resampling, schedules, logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from lmscope.errors import CheckpointError
from lmscope.sae import SAE, SAEError, build_sae, load_sae, metrics
from lmscope.sae.geometric_median import geometric_median
from lmscope.sae.resample import resample_dead_latents
from lmscope.sae.train_config import SAETrainConfig, learning_rate, sparsity_scale
from lmscope.sae.trainer import SAETrainer, train_sae, train_saes


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny matrices: thread synchronisation would cost more than it saves (and make the
    time depend on the machine's load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


D = 12


def batches(n: int, rows: int = 32, d: int = D, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=gen) * 3 + 1 for _ in range(n)]


class Stream:
    """A stateful source, as the activation store: iterator + state_dict."""

    def __init__(self, data: list[torch.Tensor]) -> None:
        self.data, self.position = data, 0
        self.loaded: dict[str, Any] | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> torch.Tensor:
        if self.position >= len(self.data):
            raise StopIteration
        self.position += 1
        return self.data[self.position - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state
        self.position = state["position"]


SETTINGS = {
    "total_steps": 12,
    "lr": 1e-2,
    "lr_warmup_steps": 3,
    "sparsity_warmup_steps": 4,
    "dead_after_tokens": 64,
    "resample_dead": True,
    "resample_every_steps": 5,
    "log_every": 2,
}


def stop_at(step: int) -> Any:
    def on_step(trainer: SAETrainer) -> None:
        if trainer.step == step:
            trainer.request_stop()

    return on_step


@pytest.mark.parametrize(
    ("arch", "kw", "stateful"),
    [
        ("topk", {"k": 3}, False),
        (
            "jumprelu",  # a high initial threshold: some latents die, and are resampled
            {"normalize_activations": "expected_average_only_in", "jumprelu_init_threshold": 4.0},
            True,
        ),
    ],
)
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(
    arch: str, kw: dict, stateful: bool, tmp_path: Path
) -> None:
    data = batches(12)
    source = (lambda: Stream(data)) if stateful else (lambda: list(data))
    whole = build_sae(d_in=D, d_sae=48, arch=arch, seed=1, **kw)
    full = train_sae(whole, source(), out=tmp_path / "whole", **SETTINGS)
    assert full.steps == 12 and full.resampled > 0  # resampling is part of what resumes

    first = build_sae(d_in=D, d_sae=48, arch=arch, seed=1, **kw)
    part = train_sae(first, source(), out=tmp_path / "split", on_step=stop_at(6), **SETTINGS)
    assert part.interrupted and part.steps == 6
    assert not (tmp_path / "split" / "model.safetensors").exists()  # no final SAE yet
    fresh = build_sae(d_in=D, d_sae=48, arch=arch, seed=99, **kw)  # other weights: restored
    second_source = source()
    rest = train_sae(fresh, second_source, out=tmp_path / "split", **SETTINGS)
    assert rest.steps == 12 and not rest.interrupted
    if stateful:
        assert second_source.loaded == {"position": 6}
    for name, tensor in whole.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.cfg == whole.cfg  # e.g. the estimated activation scale
    logs = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("whole", "split")]
    strip = [
        [{k: v for k, v in json.loads(x).items() if k != "acts_per_s"} for x in t.splitlines()]
        for t in logs
    ]
    assert strip[0] == strip[1]
    saved = load_sae(tmp_path / "split")
    assert torch.equal(saved.W_dec, whole.W_dec)
    summary = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert summary["steps"] == 12 and summary["fvu"] >= 0 and "l0" in summary


def test_resuming_into_a_different_sae_is_refused(tmp_path: Path) -> None:
    sae = build_sae(d_in=D, d_sae=48, arch="standard", seed=0)
    train_sae(sae, batches(2), out=tmp_path, total_steps=2, checkpoint_every=1)
    other = build_sae(d_in=D, d_sae=24, arch="standard", seed=0)
    with pytest.raises(CheckpointError, match=r"d_sae=48.*d_sae=24"):
        train_sae(other, batches(4), out=tmp_path, total_steps=4)


def test_several_saes_and_a_transcoder_train_in_one_pass(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    data = [
        {"a": torch.randn(64, 8, generator=gen) + 5, "b": torch.randn(64, 6, generator=gen) - 2}
        for _ in range(4)
    ]
    saes = {
        "a": build_sae(d_in=8, d_sae=32, arch="topk", k=2, hook_name="a", seed=0),
        "b": build_sae(d_in=6, d_sae=24, arch="standard", hook_name="b", seed=0),
        "a->b": build_sae(
            d_in=8, d_sae=16, arch="jumprelu", hook_name="a", hook_name_out="b", d_out=6, seed=0
        ),
    }
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in saes}
    for name, sae in saes.items():
        sae.hook_sae_input.add_hook(lambda x, h, name=name: seen[name].append(x))
    result = train_saes(saes, data, out=tmp_path, lr=1e-3, log_every=1)
    assert result.steps == 4 and result.tokens == 4 * 64  # stopped at the end of the data
    # each SAE saw its own hook's rows (the median-init pass, then each step)
    assert torch.equal(seen["a"][1], data[0]["a"]) and torch.equal(seen["b"][1], data[0]["b"])
    assert torch.equal(seen["a->b"][1], data[0]["a"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {x["sae"] for x in lines} == set(saes) and len(lines) == 12
    for key in ("mse", "l0", "fvu", "dead_fraction", "lr", "acts_per_s", "dense_fraction"):
        assert all(math.isfinite(x[key]) for x in lines), key
    assert all(x["l0"] <= 2 for x in lines if x["sae"] == "a")
    for name in saes:
        assert load_sae(tmp_path / name).cfg == saes[name].cfg
    assert (tmp_path / "a->b" / "feature_density.safetensors").is_file()
    with pytest.raises(SAEError, match=r"no activations for SAE 'c'.*holds a, b"):
        train_saes({"c": build_sae(d_in=8, d_sae=8, hook_name="c")}, data, total_steps=1)


def test_b_dec_starts_at_the_geometric_median_of_the_first_batch() -> None:
    data = batches(1, rows=64)
    sae = build_sae(d_in=D, d_sae=24, arch="standard", seed=0)
    trainer = SAETrainer({"s": sae}, data, SAETrainConfig(total_steps=1))
    trainer._initialise(data[0])
    assert torch.allclose(sae.b_dec, geometric_median(data[0]), atol=1e-6)


def test_a_normalising_source_is_fed_as_is_and_its_factor_recorded() -> None:
    raw = batches(5)

    class Normalised(list):
        scaling_factors: ClassVar[dict[str, float]] = {"h": 0.25}

    pre = build_sae(d_in=D, d_sae=24, arch="topk", k=3, hook_name="h", seed=0)
    train_sae(pre, Normalised([x * 0.25 for x in raw]), lr=1e-2)
    assert pre.cfg.activation_scale == 0.25
    assert pre.cfg.normalize_activations == "expected_average_only_in"
    own = build_sae(
        d_in=D,
        d_sae=24,
        arch="topk",
        k=3,
        hook_name="h",
        seed=0,
        normalize_activations="expected_average_only_in",
        activation_scale=0.25,
    )
    train_sae(own, raw, lr=1e-2)  # raw batches, scaled by the SAE itself: the same run
    for name, tensor in own.state_dict().items():
        assert torch.equal(pre.state_dict()[name], tensor), name


def test_resampling_reinitialises_dead_latents_and_their_adam_state() -> None:
    sae = build_sae(d_in=D, d_sae=16, arch="standard", seed=0)
    x = batches(1, rows=50)[0]
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.training_loss(x).total.backward()
    opt.step()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 7, 11]] = True
    alive_enc = sae.W_enc[:, ~dead].norm(dim=0).mean().detach()
    before = sae.W_dec[~dead].detach().clone()
    with torch.no_grad():
        sae.b_enc[dead] = -5.0
    x_n = sae.normalize_input(x)
    n = resample_dead_latents(sae, opt, dead, x_n, x_n, torch.Generator().manual_seed(0))
    assert n == 3
    assert torch.equal(sae.W_dec[~dead], before)  # live latents untouched
    sae.requires_grad_(False)
    rows = (x - sae.b_dec) / (x - sae.b_dec).norm(dim=1, keepdim=True)
    for j in (2, 7, 11):  # each new direction is a (centred, scaled) input of the batch
        direction = sae.W_dec[j] / sae.W_dec[j].norm()
        assert (rows @ direction).max() == pytest.approx(1.0, abs=1e-5)
        assert sae.W_enc[:, j].norm() == pytest.approx(0.2 * float(alive_enc), rel=1e-4)
        assert sae.b_enc[j] == 0
    state = opt.state[sae.W_dec]
    assert (state["exp_avg"][dead] == 0).all() and (state["exp_avg_sq"][dead] == 0).all()
    assert (state["exp_avg_sq"][~dead] != 0).any()
    assert (opt.state[sae.W_enc]["exp_avg"][:, dead] == 0).all()


def test_learning_rate_and_sparsity_warmup_schedules() -> None:
    cfg = SAETrainConfig(lr=1.0, lr_warmup_steps=10, lr_schedule="linear")
    rates = [learning_rate(s, cfg, 100) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == 1.0
    assert rates[79] == 1.0 and rates[80] == 1.0 and rates[90] == pytest.approx(0.5)
    assert rates[99] == pytest.approx(0.05)  # linear to 0 over the last 20%
    cos = SAETrainConfig(lr=1.0, lr_schedule="cosine", final_lr=0.1)
    assert learning_rate(0, cos, 100) == 1.0 and learning_rate(50, cos, 100) == pytest.approx(0.55)
    assert learning_rate(500, cfg, None) == 1.0  # no known end: no decay
    warm = SAETrainConfig(sparsity_warmup_steps=4)
    assert [sparsity_scale(s, warm) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(Exception, match="final_lr"):
        SAETrainConfig(lr=1e-3, final_lr=1.0)


def test_total_tokens_sets_the_number_of_steps() -> None:
    sae = build_sae(d_in=D, d_sae=8, seed=0)
    result = train_sae(sae, batches(10, rows=32), total_tokens=100, log_every=1)
    assert result.steps == 4 and result.tokens == 128  # ceil(100 / 32) batches


def test_metrics_measure_what_they_claim() -> None:
    target = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert float(metrics.fvu(target.mean(0).expand(2, 2), target)) == pytest.approx(1.0)
    assert float(metrics.fvu(target, target)) == 0.0
    half = target.mean(0) + 0.5 * (target - target.mean(0))
    assert float(metrics.fvu(half, target)) == pytest.approx(0.25)
    acts = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    assert float(metrics.l0(acts)) == 1.5
    counts = metrics.firing_counts(acts)
    assert counts.tolist() == [1, 2, 0]
    density = metrics.feature_density(counts, 2)
    assert metrics.dead_fraction(density) == pytest.approx(1 / 3)
    assert metrics.dense_fraction(density, above=0.6) == pytest.approx(1 / 3)
    tracker = metrics.FiringTracker(3)
    tracker.update(counts, 2)
    tracker.update(torch.tensor([0, 1, 0]), 5)
    assert tracker.since_fired.tolist() == [5, 0, 7]
    assert tracker.dead_mask(6).tolist() == [False, False, True]


def test_training_leaves_the_saes_in_eval_mode() -> None:
    sae: SAE = build_sae(d_in=D, d_sae=8, arch="batchtopk", k=2, seed=0)
    train_sae(sae, batches(2))
    assert not sae.training and float(sae.threshold) > 0  # BatchTopK now uses its threshold


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_only_while_it_runs(keep: bool) -> None:
    from lmscope import allocator

    if not allocator.allocator_tunable():
        pytest.skip("the allocator can only be tuned under glibc")
    seen: list[bool] = []
    sae = build_sae(d_in=D, d_sae=8, seed=0)
    train_sae(
        sae,
        batches(2),
        keep_freed_memory=keep,
        on_step=lambda trainer: seen.append(allocator.keeping_freed_memory()),
    )
    assert seen == [keep, keep]
    assert not allocator.keeping_freed_memory()
