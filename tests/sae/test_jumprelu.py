"""JumpReLU's data-driven threshold start and pre-activation loss: what they set, where their
gradients go, their validation, and that the L0 target is reached in a short run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lmscope.errors import ConfigError
from lmscope.sae import SAEConfig, build_sae, metrics
from lmscope.sae.jumprelu import JumpReLUSAE
from lmscope.sae.trainer import train_sae
from tests.sae.test_recovery import ground_truth, sparse_batches


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: thread synchronisation would cost more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(**kw: object) -> JumpReLUSAE:
    sae = build_sae(d_in=16, d_sae=64, arch="jumprelu", seed=0, **kw)
    assert isinstance(sae, JumpReLUSAE)
    return sae


def test_init_l0_puts_each_threshold_at_its_firing_quantile() -> None:
    sae = make(jumprelu_init_l0=4.0)
    x = torch.randn(640, 16, generator=torch.Generator().manual_seed(0)) * 3
    sae.initialise_from_data(x)
    acts, pre = sae.encode_with_hidden_pre(x)
    # every latent fires on round(640 * 4 / 64) = 40 inputs (continuous data: no ties)
    assert ((pre > sae.threshold) & (pre > 0)).sum(0).tolist() == [40] * 64
    assert float(metrics.l0(acts)) == pytest.approx(4.0)
    assert (sae.threshold >= 0).all()


def test_without_init_l0_the_data_does_not_move_the_thresholds() -> None:
    sae = make(jumprelu_init_threshold=0.3)
    sae.initialise_from_data(torch.randn(100, 16))
    assert torch.equal(sae.threshold.detach(), torch.full((64,), 0.3))


def test_the_trainer_applies_init_l0_on_the_first_batch() -> None:
    sae = make(jumprelu_init_l0=8.0, normalize_activations="expected_average_only_in")
    batch = torch.randn(512, 16) * 5 + 1
    train_sae(sae, [batch], total_steps=1, lr=1e-9, log_every=1)
    # after one step at a negligible rate the L0 is still the one the thresholds were set for
    assert float(metrics.l0(sae.encode(batch))) == pytest.approx(8.0, rel=0.05)


def test_thresholds_get_their_own_learning_rate() -> None:
    sae = make(jumprelu_threshold_lr_scale=10.0)
    groups = sae.param_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0] and groups[1]["params"] == [sae.threshold]
    assert sum(len(g["params"]) for g in groups) == len(list(sae.parameters()))
    assert len(make().param_groups()) == 1  # scale 1: one group, as every other variant
    with torch.no_grad():
        sae.threshold.fill_(1.0)
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    x = torch.randn(256, 16) * 3
    train_sae(sae, [x], total_steps=1, lr=1e-3, geometric_median_init=False, log_every=1)
    # Adam's first step moves every parameter by about its rate: 10x for the thresholds
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in sae.named_parameters()}
    assert moved["threshold"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["b_enc"] == pytest.approx(1e-3, rel=1e-3)


def test_pre_act_loss_pushes_only_latents_below_their_threshold() -> None:
    sae = make(pre_act_loss_coefficient=1.0, pre_act_loss_dead_only=False)
    with torch.no_grad():
        sae.threshold.fill_(0.5)
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 64)[:, None])  # rows of different norms
    pre = torch.randn(32, 64, requires_grad=True)
    loss = sae.pre_act_loss(pre)
    loss.backward()
    below = pre.detach() < 0.5
    assert below.any() and (~below).any()
    norms = sae.decoder_norms().detach()
    expected = torch.where(below, -norms / 32, torch.zeros(()))  # d/dpre of the batch mean
    torch.testing.assert_close(pre.grad, expected)
    gap = (0.5 - pre.detach()).relu() * norms
    assert float(loss.detach()) == pytest.approx(float(gap.sum(-1).mean()), rel=1e-6)
    # thresholds of latents that are ever below get a positive gradient (lowered by descent)
    assert (sae.threshold.grad > 0).all()


def test_pre_act_loss_reaches_only_dead_latents_by_default() -> None:
    sae = make(pre_act_loss_coefficient=0.5)
    x = torch.randn(64, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_loss(x, dead_mask=dead)
    assert float(out.aux) > 0 and "pre_act_loss" in out.metrics
    out.aux.backward()
    assert (sae.threshold.grad[10:] == 0).all() and (sae.threshold.grad[:10] > 0).any()
    none_dead = sae.training_loss(x, dead_mask=torch.zeros(64, dtype=torch.bool))
    assert float(none_dead.aux) == 0.0
    off = make().training_loss(x, dead_mask=dead)  # coefficient 0: no loss at all
    assert float(off.aux) == 0.0 and "pre_act_loss" not in off.metrics


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"jumprelu_init_l0 = 0 .*\(0, d_sae = 16\]"):
        SAEConfig(d_in=8, d_sae=16, arch="jumprelu", jumprelu_init_l0=0)
    with pytest.raises(ConfigError, match=r"jumprelu_init_l0 = 17"):
        SAEConfig(d_in=8, d_sae=16, arch="jumprelu", jumprelu_init_l0=17)
    with pytest.raises(ConfigError, match=r"pre_act_loss_coefficient = -1"):
        SAEConfig(d_in=8, d_sae=16, arch="jumprelu", pre_act_loss_coefficient=-1)
    cfg = SAEConfig(d_in=8, d_sae=16, arch="jumprelu", jumprelu_init_l0=2.5)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("init_l0", [None, 4.0])
def test_the_quadratic_loss_reaches_its_target_l0_in_a_short_run(init_l0: float | None) -> None:
    """On sparse synthetic data (3-5 of 256 directions per input), a JumpReLU SAE whose
    quadratic loss targets L0 4 ends within 20% of it after 300 steps when its thresholds
    start from the data; from the constant start (0.01) it is still far above."""
    truth = ground_truth()
    pool = sparse_batches(truth, 20, rows=256)
    held_out = sparse_batches(truth, 1, rows=2048, seed=7)[0]
    sae = build_sae(
        d_in=64,
        d_sae=256,
        arch="jumprelu",
        seed=0,
        jumprelu_sparsity_loss="quadratic",
        target_l0=4.0,
        jumprelu_init_l0=init_l0,
        normalize_activations="expected_average_only_in",
    )
    steps = 300
    train_sae(
        sae,
        (pool[i % len(pool)] for i in range(steps)),
        total_steps=steps,
        lr=3e-3,
        lr_warmup_steps=15,
        sparsity_warmup_steps=30,
        log_every=steps,
    )
    l0 = float(metrics.l0(sae.encode(held_out)))
    if init_l0 is None:
        assert l0 > 8.0
    else:
        assert l0 == pytest.approx(4.0, rel=0.2)
