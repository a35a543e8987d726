"""Linear probes and single-feature search on cached activations.

`train_probe` fits a logistic (classification) or linear (regression) probe in torch:
logistic by Newton's method on the mean cross-entropy, linear in closed form (ridge),
both with an L2 penalty on the weights and on standardised features, with a seeded
train/test split (stratified for classes). It reports accuracy and AUC, or R^2.

`neuron_search` asks the narrower question of the seeds ("a single neuron can learn to
track sentiment"): which single column of an activation matrix - an MLP neuron, or any
feature such as an SAE latent - tracks a label best, by Pearson correlation
(point-biserial for 0/1 labels) and by AUC. AUC is computed exactly from ranks, ties
averaged (the Mann-Whitney U statistic), so it equals the fraction of (positive,
negative) pairs ordered correctly, ties counting one half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.interpret.linear_models import fit_logistic, fit_ridge

#: Columns per chunk in the per-column statistics (bounds the float64 working copy).
_CHUNK_ELEMENTS = 1 << 24


def _labels(y: Tensor | Sequence[float], n: int) -> Tensor:
    labels = torch.as_tensor(y)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise LmscopeError(
            f"labels must be one value per row: expected shape [{n}], got {list(labels.shape)}."
        )
    return labels


def _matrix(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.dtype.is_floating_point:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise LmscopeError(f"{what} must be a float tensor [n, features]; got {shape}.")
    if not bool(torch.isfinite(x).all()):
        raise LmscopeError(f"{what} holds NaN or infinite values.")
    return x


def _is_binary(labels: Tensor) -> bool:
    return bool(((labels == 0) | (labels == 1)).all())


def _column_chunks(n_rows: int, n_cols: int) -> list[slice]:
    width = max(1, _CHUNK_ELEMENTS // max(n_rows, 1))
    return [slice(i, min(i + width, n_cols)) for i in range(0, n_cols, width)]


def average_ranks(x: Float[Tensor, "n cols"]) -> Float[Tensor, "n cols"]:
    """1-based ranks of each column's values, tied values sharing their average rank."""
    xt = x.T.contiguous()
    ordered = xt.sort(dim=1).values
    below = torch.searchsorted(ordered, xt, right=False)  # values strictly smaller
    upto = torch.searchsorted(ordered, xt, right=True)  # values smaller or equal
    # A tie block occupies ranks below+1 .. upto; its average is their midpoint.
    return ((below + upto + 1).to(torch.float64) / 2).T


def auc(scores: Float[Tensor, "n ..."], labels: Tensor | Sequence[int]) -> Float[Tensor, ...]:
    """Area under the ROC curve of each score column for 0/1 `labels`, exactly.

    Equals P(score of a positive > score of a negative) + P(tie) / 2 over all pairs,
    computed from average ranks in O(n log n) per column. 1-D scores give a scalar.
    """
    one = scores.dim() == 1
    matrix = _matrix(scores[:, None] if one else scores, "scores")
    y = _labels(labels, matrix.shape[0])
    if not _is_binary(y):
        raise LmscopeError("AUC needs 0/1 labels (1 = positive class).")
    pos = y.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise LmscopeError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives.")
    out = torch.empty(matrix.shape[1], dtype=torch.float64)
    for cols in _column_chunks(*matrix.shape):
        rank_sum = average_ranks(matrix[:, cols].double())[pos.to(matrix.device)].sum(0)
        out[cols] = ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).cpu()
    return out[0] if one else out


def pearson(
    x: Float[Tensor, "n cols"], labels: Float[Tensor, " n"] | Sequence[float]
) -> Float[Tensor, " cols"]:
    """Pearson correlation of each column with `labels` (point-biserial for 0/1 labels).

    Constant columns (no variance) get 0.
    """
    matrix = _matrix(x, "activations")
    y = _labels(labels, matrix.shape[0]).double().to(matrix.device)
    yc = y - y.mean()
    out = torch.empty(matrix.shape[1], dtype=torch.float64)
    for cols in _column_chunks(*matrix.shape):
        xc = matrix[:, cols].double()
        xc = xc - xc.mean(0)
        denom = (xc.square().sum(0) * yc.square().sum()).sqrt()
        r = (xc * yc[:, None]).sum(0) / denom
        out[cols] = torch.where(denom > 0, r, torch.zeros_like(r)).cpu()
    return out


@dataclass
class NeuronSearch:
    """Every column's correlation (and AUC, for 0/1 labels) with the label; the top ones.

    `top` holds column indices, best first: by distance of AUC from 0.5 for 0/1 labels,
    else by |correlation|, so columns that fire *less* on the positive class rank too
    (their AUC is below 0.5 and their correlation negative).
    """

    correlation: Float[Tensor, " cols"]
    auc: Float[Tensor, " cols"] | None
    mean_positive: Float[Tensor, " cols"] | None
    mean_negative: Float[Tensor, " cols"] | None
    top: list[int]
    names: list[str] | None = None

    def rows(self) -> list[dict[str, Any]]:
        """The top columns as table rows (rank, index, name, correlation, AUC, class means)."""
        out = []
        for rank, i in enumerate(self.top, 1):
            row: dict[str, Any] = {"rank": rank, "index": i}
            if self.names is not None:
                row["name"] = self.names[i]
            row["correlation"] = float(self.correlation[i])
            if self.auc is not None:
                assert self.mean_positive is not None and self.mean_negative is not None
                row["auc"] = float(self.auc[i])
                row["mean_positive"] = float(self.mean_positive[i])
                row["mean_negative"] = float(self.mean_negative[i])
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the top rows."""
        return {"n_features": int(self.correlation.shape[0]), "top": self.rows()}


def neuron_search(
    acts: Float[Tensor, "n cols"],
    labels: Tensor | Sequence[float],
    *,
    top: int = 20,
    names: Sequence[str] | None = None,
) -> NeuronSearch:
    """Rank single columns of `acts` (neurons, SAE features ...) by how well they track `labels`.

    `acts` is one row per example (e.g. `collect_activations` of ``mlp.hook_post``);
    `labels` are 0/1 classes (AUC and point-biserial correlation) or real values
    (Pearson correlation only). Ties in AUC are broken by |correlation|, then by the
    lower column index.
    """
    matrix = _matrix(acts, "acts")
    y = _labels(labels, matrix.shape[0])
    if top < 1:
        raise LmscopeError(f"top={top} must be >= 1.")
    if names is not None and len(names) != matrix.shape[1]:
        raise LmscopeError(f"names has {len(names)} entries for {matrix.shape[1]} columns.")
    r = pearson(matrix, y.double())
    scores, means = None, (None, None)
    if _is_binary(y):
        scores = auc(matrix, y)
        pos = y.bool().to(matrix.device)
        means = (matrix[pos].double().mean(0).cpu(), matrix[~pos].double().mean(0).cpu())
        key = (scores - 0.5).abs()
    else:
        key = r.abs()
    # Ties in the key (several perfect separators, AUC 1 or 0) go to the larger |r|,
    # then to the lower index: two stable sorts, the secondary key first.
    by_r = torch.argsort(r.abs(), descending=True, stable=True)
    order = by_r[torch.argsort(key[by_r], descending=True, stable=True)][:top].tolist()
    return NeuronSearch(r, scores, means[0], means[1], order, list(names) if names else None)


ProbeKind = Literal["logistic", "linear"]


@dataclass
class Probe:
    """A trained linear probe: ``score = x @ coef + intercept`` on raw activations.

    `coef` is [features] for a binary or regression probe, [features, classes] for more
    classes. `metrics` holds accuracy (and AUC when binary) or R^2, for "train" and
    "test" (test absent when `test_fraction` was 0).
    """

    kind: ProbeKind
    coef: Tensor
    intercept: Tensor
    classes: list[float] | None
    metrics: dict[str, dict[str, float]]
    train_index: Tensor = field(repr=False)
    test_index: Tensor = field(repr=False)

    def decision(self, x: Float[Tensor, "n features"]) -> Tensor:
        """Raw scores: logits (logistic) or predicted values (linear)."""
        return x.to(self.coef.dtype) @ self.coef + self.intercept

    def predict(self, x: Float[Tensor, "n features"]) -> Tensor:
        """Predicted class labels (logistic) or values (linear)."""
        scores = self.decision(x)
        if self.kind == "linear":
            return scores
        assert self.classes is not None
        index = (scores > 0).long() if scores.dim() == 1 else scores.argmax(-1)
        return torch.tensor(self.classes, dtype=torch.float64)[index.cpu()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (kind, classes, sizes, metrics)."""
        return {
            "kind": self.kind,
            "classes": self.classes,
            "n_train": int(self.train_index.numel()),
            "n_test": int(self.test_index.numel()),
            "metrics": self.metrics,
        }


def _split(y: Tensor, test_fraction: float, seed: int, stratify: bool) -> tuple[Tensor, Tensor]:
    """Seeded train/test indices; stratified keeps each class's share in both parts."""
    if not 0 <= test_fraction < 1:
        raise LmscopeError(f"test_fraction={test_fraction} must be in [0, 1).")
    generator = torch.Generator().manual_seed(seed)
    groups = (
        [torch.nonzero(y == c).flatten() for c in y.unique()]
        if stratify
        else [torch.arange(len(y))]
    )
    train, test = [], []
    for group in groups:
        shuffled = group[torch.randperm(len(group), generator=generator)]
        n_test = round(test_fraction * len(group))
        test.append(shuffled[:n_test])
        train.append(shuffled[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _metrics(probe: Probe, x: Tensor, y: Tensor) -> dict[str, float]:
    scores = probe.decision(x)
    if probe.kind == "linear":
        residual = (y - scores).square().sum()
        total = (y - y.mean()).square().sum()
        r2 = float(1 - residual / total) if total > 0 else float("nan")
        return {"r2": r2, "mse": float(residual / len(y))}
    result = {"accuracy": float((probe.predict(x) == y.double()).double().mean())}
    if scores.dim() == 1 and len(y.unique()) == 2:
        result["auc"] = float(auc(scores, (y == max(probe.classes or [1])).long()))
    return result


def train_probe(
    x: Float[Tensor, "n features"],
    y: Tensor | Sequence[float],
    *,
    kind: ProbeKind = "logistic",
    l2: float = 1e-3,
    steps: int = 100,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Probe:
    """Fit a linear probe from activations `x` to labels `y`, with a held-out test set.

    kind "logistic": `y` holds class labels (two or more); up to `steps` Newton
    iterations on the mean cross-entropy plus ``l2 * ||w||^2`` (`fit_logistic`). kind
    "linear": `y` holds real values; ridge regression in closed form with the same
    penalty (`fit_ridge`). Features
    are standardised with the training set's statistics (the returned `coef` is for raw
    activations). The split is drawn from `seed`, so a probe is reproducible.
    """
    if kind not in ("logistic", "linear"):
        raise LmscopeError(f"kind={kind!r} is invalid: use 'logistic' or 'linear'.")
    if l2 < 0 or steps < 1:
        raise LmscopeError(f"l2={l2} must be >= 0 and steps={steps} >= 1.")
    matrix = _matrix(x, "x").detach().cpu().double()
    labels = _labels(y, matrix.shape[0]).cpu()
    train, test = _split(labels, test_fraction, seed, stratify=kind == "logistic")
    if len(train) < 2:
        raise LmscopeError(f"only {len(train)} training examples; give more data.")
    x_train = matrix[train]
    mean, std = x_train.mean(0), x_train.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay put
    scaled = (x_train - mean) / std
    classes = None
    if kind == "logistic":
        classes = sorted(float(c) for c in labels[train].unique())
        if len(classes) < 2:
            raise LmscopeError("the training set has a single class; a classifier needs two.")
        target = torch.searchsorted(
            torch.tensor(classes, dtype=torch.float64), labels[train].double()
        )
        w, b = fit_logistic(scaled, target, len(classes), l2=l2, steps=steps)
    else:
        w, b = fit_ridge(scaled, labels[train].double(), l2=l2)
    # Undo the standardisation: score = ((x - mean) / std) @ w + b = x @ coef + intercept.
    coef = w / (std[:, None] if w.dim() == 2 else std)
    probe = Probe(kind, coef, b - mean @ coef, classes, {}, train, test)
    probe.metrics["train"] = _metrics(probe, x_train, labels[train])
    if len(test):
        probe.metrics["test"] = _metrics(probe, matrix[test], labels[test])
    return probe


__all__ = [
    "NeuronSearch",
    "Probe",
    "auc",
    "average_ranks",
    "neuron_search",
    "pearson",
    "train_probe",
]
