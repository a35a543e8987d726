"""Activation patching: no-op and full patches, normalisation, grids, TransformerLens parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

import lmscope
from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.metrics import logit_diff_metric, normalized_metric
from lmscope.interpret.patching import (
    activation_patch,
    patch_attn_out,
    patch_heads,
    patch_mlp_out,
    patch_residual,
    run_patched,
)
from lmscope.interpret.sites import LAYOUTS, Site
from lmscope.model import build_model
from tests.conftest import small

ALL = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"]
METRIC = logit_diff_metric(5, 9)
#: The corrupted prompt differs from the clean one at this position only.
DIFF = 2


@pytest.fixture(scope="module")
def model() -> lmscope.BaseTransformer:
    # init_std 0.15: weights large enough for attention and MLPs to be far from linear.
    return build_model(small("gpt2-small", n_layers=3, init_std=0.15), seed=0).eval()


@pytest.fixture(scope="module")
def pair() -> tuple[Tensor, Tensor]:
    clean = torch.tensor([[7, 3, 11, 20, 4, 33, 8]])
    corrupted = clean.clone()
    corrupted[0, DIFF] = 40
    return clean, corrupted


def metric_of(model: lmscope.BaseTransformer, tokens: Tensor) -> float:
    with torch.no_grad():
        return float(METRIC(model(tokens)))


@pytest.mark.parametrize("activation", ALL)
def test_patching_a_run_with_its_own_activations_changes_nothing(model, pair, activation) -> None:
    clean, _ = pair
    result = activation_patch(
        model, clean, clean, METRIC, activation=activation, by_position=True, normalize=False
    )
    assert torch.allclose(result.values, torch.tensor(metric_of(model, clean)), atol=1e-5)
    assert result.effect.abs().max() < 1e-5


def test_patching_everything_from_the_corrupted_run_gives_the_corrupted_logits(model, pair) -> None:
    clean, corrupted = pair
    with torch.no_grad():
        expected = model(corrupted)
        names = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"]
        _, cache = model.run_with_cache(corrupted, names_filter=names)
        for name in names:  # all positions of the first or last residual stream
            layout = LAYOUTS["resid_pre" if name.endswith("pre") else "resid_post"]
            got = run_patched(model, clean, {name: cache[name]}, [[Site(name, layout)]])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # the embeddings, every head and every MLP: the whole final residual stream
        every = ["hook_embed"] + [
            f"blocks.{i}.{s}" for i in range(3) for s in ("attn.hook_z", "hook_mlp_out")
        ]
        _, cache = model.run_with_cache(corrupted, names_filter=every)
        sites = [Site(n, LAYOUTS["z"]) if "z" in n else Site(n) for n in every]
        got = run_patched(model, clean, {n: cache[n] for n in every}, [sites])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # leaving out the embeddings leaves the clean token in the stream: it can fail
        got = run_patched(model, clean, {n: cache[n] for n in every}, [sites[1:]])
        assert not torch.allclose(got, expected, atol=1e-3)


def test_residual_grid_normalised_clean_one_corrupted_zero(model, pair) -> None:
    clean, corrupted = pair
    result = patch_residual(model, clean, corrupted, METRIC)
    n_pos = clean.shape[1]
    assert result.values.shape == (3, n_pos) and result.axes == ("layer", "position")
    assert result.clean_metric == pytest.approx(metric_of(model, clean), abs=1e-5)
    assert result.corrupted_metric == pytest.approx(metric_of(model, corrupted), abs=1e-5)
    # layer 0's stream is just the embeddings: the one differing token restores all of
    # the clean run (1), any other position changes nothing (0)
    expected = torch.zeros(n_pos)
    expected[DIFF] = 1.0
    torch.testing.assert_close(result.values[0], expected, atol=1e-5, rtol=0)
    # positions before the change are identical in both runs at every layer (causal)
    assert result.values[:, :DIFF].abs().max() < 1e-5
    # the last layer's output at the last position is all the logits there read
    post = patch_residual(model, clean, corrupted, METRIC, hook="resid_post", layers=[-1])
    assert post.values[0, -1] == pytest.approx(1.0, abs=1e-5)
    assert post.values[0, :-1].abs().max() < 1e-5


def test_noising_mirrors_denoising(model, pair) -> None:
    clean, corrupted = pair
    noised = patch_residual(model, clean, corrupted, METRIC, direction="noise", layers=[0])
    expected = torch.ones(clean.shape[1])
    expected[DIFF] = 0.0
    torch.testing.assert_close(noised.values[0], expected, atol=1e-5, rtol=0)
    assert noised.effect[0, DIFF] == pytest.approx(1.0, abs=1e-5)
    assert noised.baseline == 1.0


def test_heads_match_a_hand_written_patch(model, pair) -> None:
    """Cells of each grid against a patch written directly with hooks (axes, order)."""
    clean, corrupted = pair
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    norm = normalized_metric(METRIC, metric_of(model, clean), metric_of(model, corrupted))

    def by_hand(name: str, index: tuple) -> float:
        def patch(act: Tensor, hook: HookPoint) -> Tensor:
            out = act.clone()
            out[index] = cache[name][index]
            return out

        with torch.no_grad():
            return float(norm(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])))

    all_ = slice(None)
    z = patch_heads(model, clean, corrupted, METRIC, by_position=True)
    assert z.values.shape == (3, 4, clean.shape[1])
    assert z.values[1, 2, 4] == pytest.approx(
        by_hand("blocks.1.attn.hook_z", (all_, 4, 2)), abs=1e-5
    )
    v = patch_heads(model, clean, corrupted, METRIC, activation="v")
    assert v.values.shape == (3, 4)
    assert v.values[2, 3] == pytest.approx(
        by_hand("blocks.2.attn.hook_v", (all_, all_, 3)), abs=1e-5
    )
    pattern = patch_heads(model, clean, corrupted, METRIC, activation="pattern", by_position=True)
    expected = by_hand("blocks.1.attn.hook_pattern", (all_, 1, 5))  # head 1, query 5
    assert pattern.values[1, 1, 5] == pytest.approx(expected, abs=1e-5)
    mlp = patch_mlp_out(model, clean, corrupted, METRIC)
    assert mlp.values[1, 3] == pytest.approx(by_hand("blocks.1.hook_mlp_out", (all_, 3)), abs=1e-5)


def test_batching_the_patches_changes_no_value(model, pair) -> None:
    clean, corrupted = pair
    one = patch_attn_out(model, clean, corrupted, METRIC, batch_size=1)
    many = patch_attn_out(model, clean, corrupted, METRIC, batch_size=64)
    torch.testing.assert_close(one.values, many.values, atol=1e-5, rtol=0)


def test_grid_shapes(model, pair) -> None:
    clean, corrupted = pair
    assert patch_residual(model, clean, corrupted, METRIC, by_position=False).values.shape == (3,)
    assert patch_heads(model, clean, corrupted, METRIC, layers=[2, 0]).values.shape == (2, 4)
    gqa = build_model(small("llama-tiny", n_kv_heads=2, init_std=0.15), seed=1).eval()
    k = patch_heads(gqa, clean, corrupted, METRIC, activation="k")
    assert k.values.shape == (2, 2)  # key/value heads, not query heads
    batch = torch.cat([clean, clean.flip(1)])
    bad = batch.clone()
    bad[:, DIFF] = 40
    res = patch_residual(model, batch, bad, logit_diff_metric([5, 6], [9, 10]))
    assert res.values.shape == (3, clean.shape[1])


def test_bad_inputs_get_clear_errors(model, pair) -> None:
    clean, corrupted = pair
    with pytest.raises(LmscopeError, match=r"same shape.*same token length"):
        patch_residual(model, clean, corrupted[:, :-1], METRIC)
    with pytest.raises(LmscopeError, match="activation 'resid' is invalid"):
        activation_patch(model, clean, corrupted, METRIC, activation="resid")
    with pytest.raises(LmscopeError, match="hook 'attn_out' is invalid"):
        patch_residual(model, clean, corrupted, METRIC, hook="attn_out")
    with pytest.raises(LmscopeError, match="layer 5 does not exist"):
        patch_residual(model, clean, corrupted, METRIC, layers=[5])
    with pytest.raises(LmscopeError, match="direction 'denoising' is invalid"):
        patch_residual(model, clean, corrupted, METRIC, direction="denoising")
    with pytest.raises(LmscopeError, match="corruption changes nothing"):
        patch_residual(model, clean, clean, METRIC)
    with pytest.raises(LmscopeError, match="one number"):
        patch_residual(model, clean, corrupted, lambda logits: logits[:, -1, :2])
    with pytest.raises(LmscopeError, match="outside"):
        patch_residual(model, clean, torch.full_like(clean, 99), METRIC)
    attn_only = build_model(small("gpt2-small", attn_only=True), seed=0).eval()
    with pytest.raises(LmscopeError, match=r"no hook 'blocks\.0\.hook_resid_mid'"):
        patch_residual(attn_only, clean, corrupted, METRIC, hook="resid_mid")
    with pytest.raises(LmscopeError, match="batch_size"):
        patch_residual(model, clean, corrupted, METRIC, batch_size=0)


class _Tok:
    """A stand-in tokenizer: token i reads as 'w{i}'."""

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


def test_result_top_json_and_plot(model, pair, tmp_path: Path) -> None:
    clean, corrupted = pair
    result = patch_residual(model, clean, corrupted, METRIC, tokenizer=_Tok())
    assert result.labels is not None and result.labels[DIFF] == "w11/w40"
    top = result.top(3)
    effects = [abs(v - result.baseline) for _, v in top]
    assert effects == sorted(effects, reverse=True)
    assert abs(result.effect).max() == pytest.approx(effects[0])
    assert top[0][0]["layer"] == 0 and top[0][0]["position"] == DIFF
    data = json.loads(json.dumps(result.to_dict()))
    assert data["axes"] == ["layer", "position"] and len(data["values"]) == 3
    png = result.plot(tmp_path / "grid.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    heads = patch_heads(model, clean, corrupted, METRIC, by_position=True)
    assert heads.plot(tmp_path / "heads.png").stat().st_size > 1000
    # text prompts go through the tokenizer
    text = patch_residual(model, "w7 w3 w11", "w7 w3 w40", METRIC, tokenizer=_Tok(), layers=[0])
    assert text.values[0, 2] == pytest.approx(1.0, abs=1e-5)


# --- parity with TransformerLens 3.9's patching module ---------------------------------


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")
def test_grids_match_transformer_lens(tmp_path: Path) -> None:
    tl = pytest.importorskip("transformer_lens")
    from transformer_lens import patching
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    from tests.io.hf.cases import CASES

    hf = CASES["gpt2"].build()
    hf.save_pretrained(tmp_path)
    ours = lmscope.load(tmp_path).eval()
    c = hf.config
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_ctx=c.n_positions,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        default_prepend_bos=False,
    )
    ref = tl.HookedTransformer(cfg)
    no = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    ref.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_value_biases=False, **no)
    clean = torch.tensor([[5, 17, 30, 8, 44, 12]])
    corrupted = clean.clone()
    corrupted[0, 1] = 50
    metric = logit_diff_metric(21, 33)
    _, clean_cache = ref.run_with_cache(clean)

    def theirs(fn_name: str) -> Tensor:
        return getattr(patching, fn_name)(ref, corrupted, clean_cache, metric).detach()

    for ours_result, fn_name in [
        (
            patch_residual(ours, clean, corrupted, metric, normalize=False),
            "get_act_patch_resid_pre",
        ),
        (patch_mlp_out(ours, clean, corrupted, metric, normalize=False), "get_act_patch_mlp_out"),
        (
            patch_heads(ours, clean, corrupted, metric, normalize=False),
            "get_act_patch_attn_head_out_all_pos",
        ),
        (
            patch_heads(ours, clean, corrupted, metric, activation="pattern", normalize=False),
            "get_act_patch_attn_head_pattern_all_pos",
        ),
    ]:
        torch.testing.assert_close(ours_result.values, theirs(fn_name), atol=1e-4, rtol=0)
    # by position: TransformerLens orders [layer, pos, head]
    by_pos = patch_heads(
        ours, clean, corrupted, metric, activation="v", by_position=True, normalize=False
    )
    expected = theirs("get_act_patch_attn_head_v_by_pos").permute(0, 2, 1)
    torch.testing.assert_close(by_pos.values, expected, atol=1e-4, rtol=0)
