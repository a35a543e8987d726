"""Each SAE variant: shapes, its activation rule, its losses' gradients, hooks, folding, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lmscope.errors import ConfigError
from lmscope.sae import SAE, SAEConfig, SAEError, build_sae, load_sae
from lmscope.sae.geometric_median import geometric_median, sum_of_distances
from lmscope.sae.jumprelu import JumpReLUFunction, StepFunction

VARIANTS = [
    ("standard", {}),
    ("topk", {"k": 5}),
    ("batchtopk", {"k": 5}),
    ("jumprelu", {}),
    ("gated", {}),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: thread synchronisation would cost more than it saves (and make the
    time depend on the machine's load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


D_IN, D_SAE = 16, 64


def make(arch: str, **kw: object) -> SAE:
    return build_sae(d_in=D_IN, d_sae=D_SAE, arch=arch, seed=0, **kw)


def perturb(sae: SAE, scale: float = 0.1) -> SAE:
    """Nonzero biases (fresh SAEs have zero ones, which would hide bias bugs)."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name not in ("W_enc", "W_dec"):
                p.add_(scale * torch.randn_like(p))
            if name == "threshold":
                p.abs_()
    return sae


@pytest.mark.parametrize(("arch", "kw"), VARIANTS)
def test_shapes_of_encode_decode_forward(arch: str, kw: dict) -> None:
    sae = perturb(make(arch, **kw)).eval()
    x = torch.randn(3, 7, D_IN)
    acts = sae.encode(x)
    assert acts.shape == (3, 7, D_SAE)
    assert (acts >= 0).all()
    assert sae.decode(acts).shape == (3, 7, D_IN)
    assert sae(x).shape == (3, 7, D_IN)
    acts2, pre = sae.encode_with_hidden_pre(x)
    assert torch.equal(acts, acts2) and pre.shape == acts.shape


@pytest.mark.parametrize(("arch", "kw"), VARIANTS)
def test_error_term_makes_the_output_the_input_until_a_latent_is_edited(
    arch: str, kw: dict
) -> None:
    sae = perturb(make(arch, **kw)).eval()
    x = torch.randn(4, D_IN)
    assert torch.allclose(sae(x, use_error_term=True), x, atol=1e-6)
    assert not torch.allclose(sae(x), x, atol=1e-3)  # the reconstruction alone is not x
    latent = int(sae.encode(x)[0].argmax())

    def ablate(acts: torch.Tensor, hook: object) -> torch.Tensor:
        acts = acts.clone()
        acts[..., latent] = 0
        return acts

    with sae.hooks(fwd_hooks=[("hook_sae_acts_post", ablate)]):
        edited = sae(x, use_error_term=True)
    change = edited[0] - x[0]
    expected = -sae.encode(x)[0, latent] * sae.W_dec[latent]
    assert torch.allclose(change, expected.detach(), atol=1e-5)


def test_topk_keeps_exactly_k_latents() -> None:
    sae = perturb(make("topk", k=5))
    x = torch.randn(50, D_IN) * 3
    acts = sae.encode(x)
    assert ((acts > 0).sum(-1) <= 5).all()
    pre = sae.encode_with_hidden_pre(x)[1]
    # the kept ones are each input's 5 largest pre-activations (all positive here)
    pre_pos = pre.clamp_min(0)
    top = pre_pos.topk(5, dim=-1).values
    assert torch.allclose(acts.sort(-1, descending=True).values[:, :5], top)
    assert ((acts > 0).sum(-1) == (pre > 0).sum(-1).clamp(max=5)).all()


@pytest.mark.parametrize(
    ("arch", "kw"), [("topk", {"k": 5}), ("batchtopk", {"k": 5}), ("standard", {})]
)
def test_sparse_training_path_matches_the_dense_one(arch: str, kw: dict) -> None:
    sae = perturb(make(arch, **kw)).train()
    if arch == "standard":  # few active latents: the sparse path is taken below 5%
        with torch.no_grad():
            sae.b_enc[3:] = -100.0
    x = torch.randn(32, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    assert sae._training_forward(sae.normalize_input(x), dead).acts is None  # sparse
    sparse = sae.training_loss(x, dead_mask=dead)
    sparse.total.backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    seen = []
    with sae.hooks(fwd_hooks=[("hook_sae_acts_post", lambda a, h: seen.append(a))]):
        dense = sae.training_loss(x, dead_mask=dead)  # a hook forces the dense path
    dense.total.backward()
    assert seen and seen[0].shape == (32, D_SAE)
    assert torch.allclose(sparse.total, dense.total, rtol=1e-5)
    assert torch.equal(sparse.firing_counts, dense.firing_counts)
    assert float(sparse.l0) == pytest.approx(float(dense.l0))
    if arch != "standard":
        assert float(sparse.aux.detach()) > 0
    for name, p in sae.named_parameters():  # the sparse backward computes the same gradients
        assert torch.allclose(sparse_grads[name], p.grad, atol=1e-5), name


def test_topk_aux_loss_reaches_only_dead_latents() -> None:
    sae = perturb(make("topk", k=3))
    x = torch.randn(64, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:20] = True
    out = sae.training_loss(x, dead_mask=dead)
    out.aux.backward()
    grad = sae.W_enc.grad.abs().sum(0)
    assert (grad[:20] > 0).any() and (grad[20:] == 0).all()
    sae.zero_grad()
    assert float(sae.training_loss(x, dead_mask=torch.zeros_like(dead)).aux) == 0.0


def test_batchtopk_keeps_k_per_input_on_average_in_training_mode() -> None:
    sae = perturb(make("batchtopk", k=4)).train()
    x = torch.randn(40, D_IN) * torch.linspace(0.2, 3, 40)[:, None]  # unequal inputs
    acts = sae.encode(x)
    per_input = (acts > 0).sum(-1)
    assert int(per_input.sum()) == 4 * 40
    assert per_input.max() > 4 > per_input.min()  # not 4 each: k on average
    out = sae.training_loss(x)
    assert float(out.l0) == pytest.approx(4.0)
    assert float(sae.threshold) > 0  # the inference threshold moved from 0


def test_batchtopk_uses_its_threshold_in_eval_mode() -> None:
    sae = perturb(make("batchtopk", k=4))
    sae.threshold.fill_(0.5)
    sae.eval()
    x = torch.randn(20, D_IN)
    acts, pre = sae.encode_with_hidden_pre(x)
    assert torch.equal(acts, torch.where(pre > 0.5, pre, torch.zeros_like(pre)))


def test_jumprelu_is_zero_below_its_threshold_and_the_preactivation_above() -> None:
    sae = perturb(make("jumprelu"))
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(D_SAE))
    acts, pre = sae.encode_with_hidden_pre(torch.randn(30, D_IN) * 2)
    above = pre > sae.threshold
    assert above.any() and (~above & (pre > 0)).any()  # both cases occur
    assert torch.equal(acts[above], pre[above])
    assert (acts[~above] == 0).all()


def test_jumprelu_threshold_gets_the_straight_through_gradient() -> None:
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    # latent 0 just above theta (inside the band), 1 just below, 2 far above
    pre = torch.tensor([[1.01, 0.99, 3.0]], requires_grad=True)
    eps = 0.05
    JumpReLUFunction.apply(pre, theta, eps).sum().backward()
    # raising theta switches a value ~theta off: d(sum)/dtheta = -theta/eps in the band
    assert theta.grad[0] == pytest.approx(-1.0 / eps)
    assert theta.grad[1] == pytest.approx(-1.0 / eps)
    assert theta.grad[2] == 0
    assert pre.grad.tolist() == [[1.0, 0.0, 1.0]]  # the ordinary gradient where on
    theta.grad = None
    StepFunction.apply(pre, theta, eps).sum().backward()
    assert theta.grad[:2].tolist() == pytest.approx([-1 / eps, -1 / eps])  # fewer on: lower L0


@pytest.mark.parametrize("mode", ["step", "tanh", "quadratic"])
def test_jumprelu_sparsity_loss_lowers_l0_through_the_threshold(mode: str) -> None:
    sae = make("jumprelu", jumprelu_sparsity_loss=mode, target_l0=1.0, jumprelu_bandwidth=2.0)
    x = torch.randn(64, D_IN)
    out = sae.training_loss(x)
    out.sparsity.backward()
    assert float(out.sparsity.detach()) > 0
    if mode == "tanh":  # smooth in the activations: the encoder learns to shrink them
        assert sae.W_enc.grad.abs().sum() > 0
    else:  # the threshold must rise to cut the L0
        assert sae.threshold.grad.sum() < 0


@pytest.mark.parametrize(("arch", "kw"), VARIANTS)
def test_decoder_rows_are_unit_norm_after_a_training_step_where_required(
    arch: str, kw: dict
) -> None:
    from lmscope.sae.trainer import train_sae

    sae = make(arch, **kw)
    batches = [torch.randn(32, D_IN) for _ in range(3)]
    train_sae(sae, batches, total_steps=3, lr=1e-2)
    norms = sae.decoder_norms().detach()
    if sae.cfg.normalize_decoder:
        assert torch.allclose(norms, torch.ones(D_SAE), atol=1e-5)
    else:  # standard: free decoder norms, the L1 is weighted by them
        assert arch == "standard" and not torch.allclose(norms, torch.ones(D_SAE), atol=1e-2)


def test_removing_the_parallel_gradient_keeps_unit_rows_to_first_order() -> None:
    sae = make("topk", k=4)
    sae.training_loss(torch.randn(16, D_IN)).total.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(D_SAE), atol=1e-6)


def test_gated_shapes_and_its_aux_loss_trains_the_gate_through_a_frozen_decoder() -> None:
    sae = perturb(make("gated"))
    x = torch.randn(32, D_IN)
    out = sae.training_loss(x)
    assert out.reconstruction.shape == (32, D_IN) and float(out.aux.detach()) > 0
    out.aux.backward()
    assert sae.W_enc.grad.abs().sum() > 0 and sae.b_gate.grad.abs().sum() > 0
    assert sae.W_dec.grad is None  # the decoder is frozen (b_dec still centres the input)
    sae.zero_grad()
    sae.training_loss(x).total.backward()
    for name in ("W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec"):
        assert getattr(sae, name).grad.abs().sum() > 0, name


@pytest.mark.parametrize(("arch", "kw"), [*VARIANTS, ("jumprelu", {"d_out": 8})])
def test_save_and_load_round_trip(arch: str, kw: dict, tmp_path: object) -> None:
    sae = perturb(make(arch, hook_name="blocks.1.hook_resid_post", **kw)).eval()
    if arch == "batchtopk":
        sae.threshold.fill_(0.2)
    path = sae.save(tmp_path / "sae")  # type: ignore[operator]
    back = load_sae(path).eval()
    assert back.cfg == sae.cfg and type(back) is type(sae)
    x = torch.randn(5, D_IN)
    assert torch.equal(back(x), sae(x))
    for name, tensor in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_transcoder_reads_one_width_and_writes_another() -> None:
    tc = make("topk", k=4, d_out=8, hook_name_out="blocks.0.hook_mlp_out", skip_connection=True)
    tc = perturb(tc)
    assert not tc.cfg.apply_b_dec_to_input and tc.b_dec.shape == (8,)
    x, y = torch.randn(10, D_IN), torch.randn(10, 8)
    assert tc(x).shape == (10, 8)
    with torch.no_grad():
        tc.W_skip.copy_(torch.randn(D_IN, 8))
    assert torch.allclose(tc(x), tc.decode(tc.encode(x)) + x @ tc.W_skip, atol=1e-5)
    out = tc.training_loss(x, y)
    assert torch.allclose(out.mse, (tc(x) - y).pow(2).sum(-1).mean(), rtol=1e-5)
    with pytest.raises(SAEError, match="output activation"):
        tc.training_loss(x)
    with pytest.raises(SAEError, match="error term"):
        tc(x, use_error_term=True)


@pytest.mark.parametrize(("arch", "kw"), [*VARIANTS, ("standard", {"d_out": 8})])
def test_folding_the_normalisation_factor_keeps_every_output(arch: str, kw: dict) -> None:
    sae = perturb(
        make(arch, normalize_activations="expected_average_only_in", activation_scale=0.3, **kw)
    ).eval()
    x = torch.randn(6, D_IN) * 10
    before, acts = sae(x), sae.encode(x)
    sae.fold_activation_norm_scaling_factor()
    assert sae.cfg.normalize_activations == "none" and sae.input_scale is None
    assert torch.allclose(sae.encode(x), acts, atol=1e-5)
    assert torch.allclose(sae(x), before, atol=1e-4)


@pytest.mark.parametrize(("arch", "kw"), [("standard", {}), ("jumprelu", {}), ("gated", {})])
def test_folding_decoder_norms_keeps_outputs_and_makes_rows_unit(arch: str, kw: dict) -> None:
    sae = perturb(make(arch, normalize_decoder=False, decoder_init_norm=0.3, **kw)).eval()
    x = torch.randn(6, D_IN)
    before = sae(x)
    sae.fold_W_dec_norm()
    assert torch.allclose(sae.decoder_norms(), torch.ones(D_SAE), atol=1e-5)
    assert torch.allclose(sae(x), before, atol=1e-5)
    with pytest.raises(SAEError, match="which latents"):
        make("topk", k=3).fold_W_dec_norm()


def test_hook_points_are_named_and_editable() -> None:
    sae = perturb(make("standard"))
    assert sae.hook_names() == [
        "hook_sae_input",
        "hook_sae_acts_pre",
        "hook_sae_acts_post",
        "hook_sae_recons",
        "hook_sae_error",
        "hook_sae_output",
    ]
    x = torch.randn(3, D_IN)
    zeroed = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", lambda a, h: a * 0)])
    assert torch.allclose(zeroed, sae.b_dec.expand(3, D_IN))


def test_clear_errors() -> None:
    sae = make("standard", hook_name="blocks.3.hook_resid_post")
    with pytest.raises(SAEError, match=r"d_in=16.*last dimension 12.*blocks\.3"):
        sae.encode(torch.randn(2, 12))
    with pytest.raises(SAEError, match="d_sae=64"):
        sae.decode(torch.randn(2, 63))
    with pytest.raises(ConfigError, match=r"SAEConfig\.arch = 'relu'.*allowed"):
        SAEConfig(d_in=8, d_sae=16, arch="relu")
    with pytest.raises(ConfigError, match=r"k = 0 .*1 <= k <= d_sae"):
        SAEConfig(d_in=8, d_sae=16, arch="topk", k=0)
    with pytest.raises(ConfigError, match=r"topk needs 1 <= k"):
        SAEConfig(d_in=8, d_sae=16, arch="topk")
    with pytest.raises(ConfigError, match="whole k"):
        SAEConfig(d_in=8, d_sae=16, arch="topk", k=2.5)
    with pytest.raises(ConfigError, match="only topk / batchtopk use k"):
        SAEConfig(d_in=8, d_sae=16, k=4)
    with pytest.raises(ConfigError, match="contradicts expansion_factor"):
        SAEConfig(d_in=8, d_sae=16, expansion_factor=4)
    with pytest.raises(ConfigError, match="transcoder's b_dec"):
        SAEConfig(d_in=8, d_sae=16, d_out=4, apply_b_dec_to_input=True)
    with pytest.raises(ConfigError, match="Did you mean 'l1_coefficient'"):
        SAEConfig.from_dict({"d_in": 8, "d_sae": 16, "l1_coeficient": 1.0})
    with pytest.raises(SAEError, match="pass no target"):
        sae.training_loss(torch.randn(2, 16), torch.randn(2, 16))


def test_config_resolves_defaults_and_round_trips_through_json(tmp_path: object) -> None:
    cfg = SAEConfig(d_in=576, expansion_factor=8, arch="topk", k=32, hook_name="blocks.2.x")
    assert cfg.d_sae == 4608 and cfg.normalize_decoder is True and cfg.apply_b_dec_to_input
    path = tmp_path / "config.json"  # type: ignore[operator]
    cfg.to_json(path)
    assert SAEConfig.from_json(path) == cfg
    relu = cfg.replace(arch="standard", k=None)  # resolved defaults follow the new arch
    assert relu.normalize_decoder is False and relu.d_sae == 4608
    assert cfg.replace(d_sae=100).d_sae == 100


def test_geometric_median_beats_a_brute_force_search() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    points[:3] += 30.0  # outliers pull the mean, not the median
    median = geometric_median(points)
    grid = (
        torch.stack(
            torch.meshgrid(torch.linspace(-2, 2, 401), torch.linspace(-2, 2, 401), indexing="ij"),
            -1,
        )
        .reshape(-1, 2)
        .double()
    )
    objective = (points[None] - grid[:, None]).norm(dim=-1).sum(-1)
    best = grid[objective.argmin()]
    assert float(sum_of_distances(points, median)) <= float(objective.min()) + 1e-9
    assert float((median - best).norm()) < 0.02  # the grid's spacing is 0.01
    assert float((points.mean(0) - median).norm()) > 1.0  # unlike the mean
