"""FactoredMatrix and the circuit views: dense equivalents, hand-built heads, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.interpret.circuits import (
    composition_scores,
    full_ov_circuit,
    full_qk_circuit,
    kv_head,
    ov_circuit,
    ov_copying_score,
    plot_composition_scores,
    plot_head_scores,
    qk_circuit,
)
from lmscope.interpret.factored import FactoredMatrix
from lmscope.model import build_model
from lmscope.model.base import BaseTransformer
from tests.conftest import small

# --- FactoredMatrix ---------------------------------------------------------------------


def _factored(m: int = 12, k: int = 4, n: int = 9, batch: tuple[int, ...] = (3,)) -> FactoredMatrix:
    return FactoredMatrix(torch.randn(*batch, m, k), torch.randn(*batch, k, n))


def test_products_transpose_and_indexing_equal_the_dense_ones() -> None:
    f = _factored()
    dense = f.A @ f.B
    assert f.shape == dense.shape == (3, 12, 9) and f.mdim == 4
    torch.testing.assert_close(f.AB, dense)
    torch.testing.assert_close(f.T.AB, dense.mT)
    torch.testing.assert_close(f[1].AB, dense[1])
    torch.testing.assert_close((2.5 * f).AB, 2.5 * dense)
    # Tensor on the right, thin (k < n) and wide (n < k) inner dims; on the left; vectors.
    for right in (torch.randn(9, 7), torch.randn(9, 2)):
        torch.testing.assert_close((f @ right).AB, dense @ right)  # type: ignore[union-attr]
    left = torch.randn(5, 12)
    torch.testing.assert_close((left @ f).AB, left @ dense)  # type: ignore[union-attr]
    v = torch.randn(9)
    torch.testing.assert_close(f @ v, dense @ v)
    wide = FactoredMatrix(torch.randn(6, 8), torch.randn(8, 5))  # k = 8 > m, n
    assert (wide @ torch.randn(5, 3)).mdim == 5  # type: ignore[union-attr]
    assert (torch.randn(2, 6) @ wide).mdim == 6  # type: ignore[union-attr]


def test_factored_times_factored_keeps_the_smaller_inner_dimension() -> None:
    f, g = _factored(12, 4, 10), _factored(10, 6, 8)
    for product, inner in ((f @ g, 4), (g.T @ f.T, 4)):
        assert isinstance(product, FactoredMatrix) and product.mdim == inner
    torch.testing.assert_close((f @ g).AB, f.AB @ g.AB)  # type: ignore[union-attr]
    torch.testing.assert_close((g.T @ f.T).AB, (f.AB @ g.AB).mT)  # type: ignore[union-attr]


def test_eigenvalues_are_the_non_zero_eigenvalues_of_the_dense_product() -> None:
    f = _factored(12, 4, 12)
    dense = torch.linalg.eigvals(f.AB.double())  # 12 per matrix: 4 non-zero, 8 ~ 0
    for ours, full in zip(f.eigenvalues, dense, strict=True):
        top = full[full.abs().argsort(descending=True)[:4]]
        assert (full.abs().sort().values[:8] < 1e-4).all()  # float32 rounding of AB
        order = lambda z: z[torch.argsort(z.real * 1e3 + z.imag)]  # noqa: E731
        torch.testing.assert_close(order(ours.to(top.dtype)), order(top), atol=1e-4, rtol=1e-4)
    with pytest.raises(LmscopeError, match="square"):
        _factored(12, 4, 9).eigenvalues  # noqa: B018


def test_svd_and_norm_equal_the_dense_ones() -> None:
    f = _factored()
    u, s, vh = f.svd()
    dense = f.AB
    torch.testing.assert_close(u @ torch.diag_embed(s) @ vh, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, torch.linalg.svdvals(dense)[..., :4], atol=1e-5, rtol=1e-5)
    eye = torch.eye(4).expand(3, 4, 4)
    torch.testing.assert_close(u.mT @ u, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(vh @ vh.mT, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(f.norm(), torch.linalg.matrix_norm(dense), atol=1e-5, rtol=1e-5)


def test_bad_factors_and_indices_are_refused() -> None:
    with pytest.raises(LmscopeError, match="do not multiply"):
        FactoredMatrix(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(LmscopeError, match="do not broadcast"):
        FactoredMatrix(torch.randn(2, 4, 3), torch.randn(5, 3, 4))
    with pytest.raises(LmscopeError, match="batch dims"):
        _factored()[0, 1]


# --- circuits of a model ----------------------------------------------------------------

GQA = small("llama-tiny", n_layers=3, n_kv_heads=2)


@pytest.fixture(scope="module")
def gqa_model() -> BaseTransformer:
    return build_model(GQA, seed=0).eval()


def test_gqa_query_heads_read_their_key_value_head(gqa_model: BaseTransformer) -> None:
    assert [kv_head(gqa_model, h) for h in range(4)] == [0, 0, 1, 1]
    attn = gqa_model.blocks[2].attn
    qk, ov = qk_circuit(gqa_model, 2, 3), ov_circuit(gqa_model, 2, 3)
    assert qk.shape == ov.shape == (32, 32) and qk.mdim == 8
    torch.testing.assert_close(qk.AB, attn.W_Q[3] @ attn.W_K[1].T)
    torch.testing.assert_close(ov.AB, attn.W_V[1] @ attn.W_O[3])
    every = qk_circuit(gqa_model, 2)  # all heads stacked, keys repeated per query head
    assert every.shape == (4, 32, 32)
    torch.testing.assert_close(every[2].AB, attn.W_Q[2] @ attn.W_K[1].T)


def test_full_circuits_go_through_the_embeddings(gqa_model: BaseTransformer) -> None:
    w_e, w_u = gqa_model.W_E.detach(), gqa_model.W_U.detach()
    qk, ov = qk_circuit(gqa_model, 1, 0).AB, ov_circuit(gqa_model, 1, 0).AB
    full_qk, full_ov = full_qk_circuit(gqa_model, 1, 0), full_ov_circuit(gqa_model, 1, 0)
    assert full_ov.shape == (61, 61) and full_ov.mdim == 8
    torch.testing.assert_close(full_qk.AB, w_e @ qk @ w_e.T, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full_ov.AB, w_e @ ov @ w_u, atol=1e-6, rtol=1e-5)


def test_copying_score_matches_the_dense_eigenvalues(gqa_model: BaseTransformer) -> None:
    scores = ov_copying_score(gqa_model)
    assert scores.shape == (3, 4)
    for layer, head in ((0, 0), (2, 3)):
        eig = torch.linalg.eigvals(full_ov_circuit(gqa_model, layer, head).AB.double())
        dense = eig.sum().real / eig.abs()[eig.abs() > 1e-9].sum()
        assert abs(float(scores[layer, head]) - float(dense)) < 1e-4


def _identity_ov_model(sign: float) -> BaseTransformer:
    """d_model = vocab = d_head = 8, W_E = I (tied: W_U = I), W_V = I, W_O = sign * I."""
    cfg = small(
        "attn-only-2l",
        n_layers=1,
        n_heads=1,
        d_model=8,
        d_head=8,
        vocab_size=8,
        tie_embeddings=True,
    )
    model = build_model(cfg)
    eye = torch.eye(8)
    with torch.no_grad():
        model.embed.weight.copy_(eye)
        model.blocks[0].attn.W_V[0].copy_(eye)
        model.blocks[0].attn.W_O[0].copy_(sign * eye)
    return model


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_identity_ov_circuit_copies_with_score_one_and_its_negation_scores_minus_one(
    sign: float,
) -> None:
    model = _identity_ov_model(sign)
    torch.testing.assert_close(full_ov_circuit(model, 0, 0).AB, sign * torch.eye(8))
    assert ov_copying_score(model).tolist() == [[pytest.approx(sign, abs=1e-6)]]


def test_a_rotation_ov_circuit_neither_copies_nor_suppresses() -> None:
    model = _identity_ov_model(1.0)
    quarter_turn = torch.zeros(8, 8)  # maps e_2i -> e_2i+1 -> -e_2i: eigenvalues +-i
    quarter_turn[0::2, 1::2] = torch.eye(4)
    quarter_turn[1::2, 0::2] = -torch.eye(4)
    with torch.no_grad():
        model.blocks[0].attn.W_O[0].copy_(quarter_turn)
    assert abs(float(ov_copying_score(model)[0, 0])) < 1e-6


def _dense_composition(model: BaseTransformer, kind: str) -> Tensor:
    """Every score from the dense d_model x d_model circuits, one pair at a time."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    ov = {lh: ov_circuit(model, *lh).AB for lh in heads}
    qk = {lh: qk_circuit(model, *lh).AB for lh in heads}
    right = {"q": qk, "k": {lh: m.T for lh, m in qk.items()}, "v": ov}[kind]
    out = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"))
    for la, ha in heads:
        for lb, hb in heads:
            if lb > la:
                w_a, w_b = ov[la, ha], right[lb, hb]
                out[la, ha, lb, hb] = (w_a @ w_b).norm() / (w_a.norm() * w_b.norm())
    return out


@pytest.mark.parametrize("kind", ["q", "k", "V"])
def test_composition_scores_match_a_dense_brute_force(
    gqa_model: BaseTransformer, kind: str
) -> None:
    scores = composition_scores(gqa_model, kind)
    assert scores.shape == (3, 4, 3, 4)
    torch.testing.assert_close(
        scores, _dense_composition(gqa_model, kind.lower()), atol=1e-5, rtol=1e-4, equal_nan=True
    )
    layer_a = torch.arange(3)[:, None, None, None]
    layer_b = torch.arange(3)[None, None, :, None]
    assert scores.isnan().equal((layer_b <= layer_a).expand_as(scores))


def test_a_hand_built_key_composing_pair_outscores_random_heads() -> None:
    """Head 0.0 writes token content e5 into direction e0; head 1.0's keys read e0."""
    model = build_model(small("attn-only-2l", d_model=16, n_heads=2, d_head=4), seed=0)
    e = torch.eye(16)
    with torch.no_grad():
        a, b = model.blocks[0].attn, model.blocks[1].attn
        for w in (a.W_V[0], a.W_O[0], b.W_K[0], b.W_Q[0]):
            w.zero_()
        a.W_V[0][:, 0] = e[5]  # reads e5 ...
        a.W_O[0][0] = e[0]  # ... writes it to e0
        b.W_K[0][:, 0] = e[0]  # keys read e0
        b.W_Q[0][:, 0] = e[6]  # queries read e6
    k_scores, q_scores = composition_scores(model, "k"), composition_scores(model, "q")
    assert float(k_scores[0, 0, 1, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(q_scores[0, 0, 1, 0]) == pytest.approx(0.0, abs=1e-6)  # queries read e6
    random_pairs = k_scores[0, 1, 1]  # head 0.1 (random) into both later heads
    assert (random_pairs < 0.6).all()


def test_bad_layers_heads_and_kinds_are_refused(gqa_model: BaseTransformer) -> None:
    with pytest.raises(LmscopeError, match="layer 3 does not exist"):
        qk_circuit(gqa_model, 3, 0)
    with pytest.raises(LmscopeError, match="head 4 does not exist"):
        ov_circuit(gqa_model, 0, 4)
    with pytest.raises(LmscopeError, match="head -5 does not exist"):
        kv_head(gqa_model, -5)
    with pytest.raises(LmscopeError, match="composition kind 'x'"):
        composition_scores(gqa_model, "x")
    with pytest.raises(LmscopeError, match="one block stack"):
        ov_copying_score(build_model(small("t5-small")))


def test_plots_write_png_files(gqa_model: BaseTransformer, tmp_path: Path) -> None:
    written = [
        plot_composition_scores(composition_scores(gqa_model, "k"), tmp_path / "k.png", "K"),
        plot_head_scores(ov_copying_score(gqa_model), tmp_path / "copy.png", "copying"),
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
