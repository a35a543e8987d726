"""Activation collection, exact AUC, neuron search, linear probes, the probe study."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import lmscope
from lmscope.errors import LmscopeError
from lmscope.interpret.activations import collect_activations
from lmscope.interpret.datasets import STEERING_PAIRS, load_dataset, sentiment
from lmscope.interpret.linear_models import fit_logistic
from lmscope.interpret.probe_study import probe_texts
from lmscope.interpret.probes import auc, neuron_search, pearson, train_probe
from tests.conftest import small

ROWS = [[5, 9, 2, 7], [11, 3], [8, 8, 1, 4, 6], [2]]


@pytest.fixture(scope="module")
def model() -> lmscope.Transformer:
    return lmscope.build_model(small("gpt2-small", init_std=0.1), seed=0).eval()


def _brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_count_with_ties() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (40, 5), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=generator)
    got = auc(scores, labels)
    for col in range(5):
        expected = _brute_auc(scores[:, col].tolist(), labels.tolist())
        assert got[col].item() == pytest.approx(expected, abs=1e-12)
    assert auc(scores[:, 0], labels).item() == pytest.approx(got[0].item())
    assert auc(torch.tensor([1.0, 2, 3, 4]), [0, 0, 1, 1]).item() == 1.0
    assert auc(torch.tensor([1.0, 1, 1, 1]), [0, 1, 0, 1]).item() == 0.5
    with pytest.raises(LmscopeError, match="both classes"):
        auc(scores, torch.ones(40, dtype=torch.long))


def test_pearson_matches_numpy() -> None:
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randn(50, dtype=torch.float64)
    expected = [np.corrcoef(x[:, i].numpy(), y.numpy())[0, 1] for i in range(4)]
    torch.testing.assert_close(pearson(x, y), torch.tensor(expected, dtype=torch.float64))
    constant = torch.ones(50, 1)
    assert pearson(constant, y).item() == 0.0


def test_planted_feature_ranks_first() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    acts = torch.randn(200, 300, generator=generator)
    acts[:, 117] = labels + 0.1 * torch.randn(200, generator=generator)
    acts[:, 40] = -2 * labels + 0.3 * torch.randn(200, generator=generator)  # fires on negatives
    search = neuron_search(acts, labels, top=5, names=[f"f{i}" for i in range(300)])
    assert search.top[:2] == [117, 40]
    rows = search.rows()
    assert rows[0]["name"] == "f117" and rows[0]["auc"] > 0.999 and rows[0]["correlation"] > 0.95
    assert rows[1]["auc"] < 0.01 and rows[1]["correlation"] < -0.9
    assert rows[0]["mean_positive"] == pytest.approx(1.0, abs=0.05)
    assert all(r["auc"] < 0.75 for r in rows[2:])
    # Real-valued labels: correlation only.
    target = torch.randn(200, generator=generator)
    acts[:, 3] = target + 0.05 * torch.randn(200, generator=generator)
    real = neuron_search(acts, target, top=1)
    assert real.top == [3] and real.auc is None and "auc" not in real.rows()[0]


def test_logistic_probe_separates_separable_data() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(120) % 2
    direction = torch.randn(16, generator=generator)
    x = torch.randn(120, 16, generator=generator)
    # Move each point to a margin of 1 on its side of the hyperplane direction . x = 0.
    along = x @ direction / direction.norm()
    x += ((2 * labels - 1) * (1 + along.abs()) - along)[:, None] * direction / direction.norm()
    probe = train_probe(x, labels, l2=1e-4, seed=0)
    assert probe.metrics["train"]["accuracy"] == 1.0
    assert probe.metrics["test"]["accuracy"] == 1.0 and probe.metrics["test"]["auc"] == 1.0
    assert probe.to_dict()["n_test"] == 30
    # The probe's weights point along the planted direction.
    cosine = torch.nn.functional.cosine_similarity(probe.coef, direction.double(), dim=0)
    assert cosine > 0.9
    assert torch.equal(probe.predict(x), labels.double())


@pytest.mark.parametrize("n_classes", [2, 3])
def test_newton_reaches_the_optimum(n_classes: int) -> None:
    """The autograd gradient of the objective vanishes at the returned weights."""
    generator = torch.Generator().manual_seed(n_classes)
    x = torch.randn(60, 8, generator=generator, dtype=torch.float64)
    target = (x[:, :n_classes].argmax(1) + (torch.rand(60, generator=generator) < 0.2)) % n_classes
    l2 = 1e-2
    w, b = fit_logistic(x, target, n_classes, l2=l2)
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    logits = x @ w + b
    if n_classes == 2:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.double())
    else:
        loss = torch.nn.functional.cross_entropy(logits, target)
    (loss + l2 * w.square().sum()).backward()
    assert w.grad is not None and b.grad is not None
    assert float(w.grad.abs().max()) < 1e-8 and float(b.grad.abs().max()) < 1e-8
    assert float(w.detach().abs().max()) > 0.1  # not the trivial start


def test_probes_are_deterministic_under_a_seed() -> None:
    x = torch.randn(80, 6)
    y = (x[:, 0] + 0.5 * torch.randn(80) > 0).long()
    a, b = train_probe(x, y, seed=3), train_probe(x, y, seed=3)
    assert torch.equal(a.coef, b.coef) and torch.equal(a.test_index, b.test_index)
    assert a.metrics == b.metrics
    c = train_probe(x, y, seed=4)
    assert not torch.equal(a.test_index, c.test_index)
    # Stratified: each class keeps its share in the test set.
    assert int(y[a.test_index].sum()) == round(0.25 * int(y.sum()))


def test_linear_probe_and_multiclass() -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(100, 5, generator=generator, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    y = x @ w + 0.7
    exact = train_probe(x, y, kind="linear", l2=0.0)
    torch.testing.assert_close(exact.coef, w)
    assert exact.intercept.item() == pytest.approx(0.7)
    assert exact.metrics["test"]["r2"] == pytest.approx(1.0)
    noisy = train_probe(
        x,
        y + 0.3 * torch.randn(100, generator=generator, dtype=torch.float64),
        kind="linear",
        l2=1e-2,
    )
    assert 0.95 < noisy.metrics["test"]["r2"] < 1.0
    classes = x[:, :3].argmax(1) * 10  # labels 0, 10, 20
    three = train_probe(x, classes, l2=1e-4)
    assert three.classes == [0.0, 10.0, 20.0] and three.coef.shape == (5, 3)
    assert three.metrics["train"]["accuracy"] > 0.95 and "auc" not in three.metrics["train"]


def test_collect_activations_pools_like_single_runs(model: lmscope.Transformer) -> None:
    names = ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"]
    singles = []
    for row in ROWS:
        _, cache = model.run_with_cache(torch.tensor([row]), names_filter=names)
        singles.append({n: cache[n][0] for n in names})
    fired = []
    handle = model.add_hook("blocks.1.hook_resid_post", lambda x, hook: fired.append(1))
    try:
        batches = [ROWS[:3], torch.tensor([ROWS[3]])]  # ragged rows, then a tensor
        for positions in ("last", "mean", "all", -1):
            got = collect_activations(model, batches, names, positions=positions, progress=False)
            assert set(got) == set(names)
            for name in names:
                if positions in ("last", -1):  # left padding: the last column is real
                    expected = torch.stack([s[name][-1] for s in singles])
                elif positions == "mean":
                    expected = torch.stack([s[name].mean(0) for s in singles])
                else:
                    expected = torch.cat([s[name] for s in singles])
                torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-5)
        masks = [torch.zeros(3, 5, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)]
        masks[0][2, 0] = True  # row 2 is the only full-length row of batch 0
        got = collect_activations(model, batches, names[0], positions=masks, progress=False)
        torch.testing.assert_close(
            got[names[0]],
            torch.stack([singles[2][names[0]][0], singles[3][names[0]][0]]),
            atol=1e-5,
            rtol=1e-5,
        )
    finally:
        handle[0].remove()
    assert not fired  # the forward pass stopped after block 0


def test_collect_activations_errors(model: lmscope.Transformer) -> None:
    with pytest.raises(LmscopeError, match="no hook point named"):
        collect_activations(model, [ROWS], "blocks.0.hook_resid_pots", progress=False)
    with pytest.raises(LmscopeError, match="empty"):
        collect_activations(model, [], "blocks.0.hook_resid_post", progress=False)
    with pytest.raises(LmscopeError, match="outside this batch"):
        collect_activations(model, [ROWS], "blocks.0.hook_resid_post", positions=9, progress=False)


def test_planted_neuron_is_found(model: lmscope.Transformer) -> None:
    """A neuron whose key vector reads token 7's embedding fires exactly on token 7."""
    net = lmscope.build_model(small("gpt2-small", init_std=0.1), seed=0).eval()
    mlp = net.blocks[0].mlp
    neuron, token = 29, 7
    with torch.no_grad():
        embedding = net.W_E[token] - net.W_E[token].mean()
        mlp.fc_in.weight[neuron] = 8 * embedding / embedding.norm()
        mlp.fc_in.bias[neuron] = -2.0
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 61, (24, 12), generator=generator)
    acts = collect_activations(
        net, [tokens[:12], tokens[12:]], "blocks.0.mlp.hook_post", positions="all", progress=False
    )["blocks.0.mlp.hook_post"]
    labels = (tokens.flatten() == token).long()
    assert 0 < int(labels.sum()) < len(labels)
    search = neuron_search(acts, labels, top=3)
    assert search.top[0] == neuron and search.auc is not None and search.auc[neuron] > 0.99


def test_datasets_are_balanced_matched_pairs() -> None:
    data = sentiment()
    assert len(data) == 80 and sum(data.labels) == 40
    pos, neg = data.split()
    assert len(set(pos)) == 40 and len(set(neg)) == 40 and not set(pos) & set(neg)
    assert load_dataset("sentiment") == data
    assert ("Love", "Hate") in STEERING_PAIRS
    with pytest.raises(LmscopeError, match="Did you mean 'sentiment'"):
        load_dataset("sentimnet")


def test_probe_study_on_a_char_model() -> None:
    from lmscope.tokenizers import CharTokenizer

    data = sentiment()
    tok = CharTokenizer.from_text("".join(data.texts))
    net = lmscope.build_model(small("gpt2-small", vocab_size=tok.vocab_size), seed=0).eval()
    study = probe_texts(net, tok, data, layer=-1, top=4, seed=1)
    assert study.layer == 1 and study.neuron_hook == "blocks.1.mlp.hook_post"
    rows = study.rows()
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and all(
        r["top_text"] in data.texts for r in rows
    )
    # The top neuron's largest text is where its pooled activation peaks.
    info = study.to_dict()
    assert (
        info["probe"]["n_test"] == 20 and 0.0 <= info["probe"]["metrics"]["test"]["accuracy"] <= 1
    )
    with pytest.raises(LmscopeError, match="layer 5 does not exist"):
        probe_texts(net, tok, data, layer=5)
