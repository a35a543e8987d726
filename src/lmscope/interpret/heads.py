"""Attention head detectors: a score in [0, 1] for every head, per kind of head.

A detector is a *detection pattern*: for each query position, the key positions a head
of that kind attends to. A head's score is the attention mass it puts on those keys,
averaged over the query positions where the pattern has at least one key:

    score = mean over (sequence, query) with targets of  sum_{k in targets(q)} A[q, k]

so a perfect head scores 1 and a head that never looks there scores 0.

- ``previous_token``: key ``q - 1``.
- ``duplicate_token``: earlier positions holding the same token as ``q``.
- ``induction``: positions right after an earlier occurrence of ``q``'s token (on
  ``R + R`` the token that followed ``q``'s token last time: where an induction head
  looks to predict what comes next).
- ``first_token``: position 0, for queries ``q >= 1`` (the BOS / attention sink; row 0
  of a causal model can only look at itself, so it is left out).

These are TransformerLens's detection patterns (``transformer_lens/head_detector.py``,
error measure ``"mul"``) with one difference: TransformerLens divides by *every* query
row, so a perfect previous-token head scores ``(n-1)/n`` and a perfect duplicate-token
head scores the fraction of tokens that have a duplicate; here rows without a target are
left out of the mean, so each score reads as "fraction of attention on the target when
there is one". A score is NaN when no query has a target (a duplicate-token score on a
text without repeated tokens).

By default the heads are scored on ``batch`` sequences ``[bos] + R + R [+ eos]``, where
``R`` is ``seq_len`` tokens drawn uniformly (with replacement) from the vocabulary minus
the special ids, by a ``torch.Generator`` seeded with `seed`: random tokens leave a head
no meaning to follow, so what it attends to is its mechanism. On a decoder with an LM
head the same run gives the induction loss gap (`InductionLoss`).

Encoders: patterns are bidirectional, and the scores are defined the same way over the
full pattern (targets are still the earlier positions; mass a head puts on later keys
counts as missed). GQA and sliding windows need nothing special: ``hook_pattern`` holds
one pattern per query head, with zeros outside the window.

Memory: each layer's pattern is reduced to scores inside its hook and dropped, so the
peak is one layer's ``[batch, head, pos, pos]`` pattern, not all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError, did_you_mean
from lmscope.hooks import HookPoint
from lmscope.interpret.indices import blocks_of

#: The detectors, in the order tables list them.
DETECTORS: tuple[str, ...] = ("previous_token", "duplicate_token", "induction", "first_token")


def detection_mask(
    tokens: Int[Tensor, "batch pos"], detector: str
) -> Bool[Tensor, "batch pos pos"]:
    """Where a head of kind `detector` attends: ``mask[b, q, k]`` (see the module docstring)."""
    batch, n = tokens.shape
    q = torch.arange(n, device=tokens.device)[:, None]
    k = torch.arange(n, device=tokens.device)[None, :]
    if detector == "previous_token":
        return (k == q - 1).expand(batch, n, n)
    if detector == "first_token":
        return ((k == 0) & (q >= 1)).expand(batch, n, n)
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]: same token at q and k
    if detector == "duplicate_token":
        return same & (k < q)
    if detector == "induction":
        # Key k follows an earlier occurrence (k - 1 < q) of q's token: shift `same` right.
        after = torch.zeros_like(same)
        after[:, :, 1:] = same[:, :, :-1] & (k[:, :-1] < q)
        return after
    raise LmscopeError(
        f"unknown head detector {detector!r}; choose from {', '.join(DETECTORS)}. "
        f"{did_you_mean(detector, DETECTORS)}".strip()
    )


def repeated_random_tokens(
    vocab_size: int,
    seq_len: int,
    batch: int,
    *,
    seed: int = 0,
    bos: int | None = None,
    eos: int | None = None,
    avoid: Collection[int] = (),
) -> Int[Tensor, "batch total"]:
    """``batch`` rows of ``[bos] + R + R [+ eos]``, ``R`` uniform over the allowed ids.

    Allowed ids: ``0..vocab_size-1`` minus `avoid`, `bos` and `eos` (special tokens
    would give a head something other than position and identity to attend by).
    """
    if seq_len < 2 or batch < 1:
        raise LmscopeError(
            f"repeated random tokens need seq_len >= 2 and batch >= 1, got {seq_len} and {batch}."
        )
    banned = {int(i) for i in avoid} | {i for i in (bos, eos) if i is not None}
    allowed = torch.tensor([i for i in range(vocab_size) if i not in banned], dtype=torch.long)
    if len(allowed) < 2:
        raise LmscopeError(f"a vocabulary of {vocab_size} leaves no tokens to draw from.")
    gen = torch.Generator().manual_seed(seed)
    half = allowed[torch.randint(len(allowed), (batch, seq_len), generator=gen)]
    parts = [half, half]
    if bos is not None:
        parts.insert(0, torch.full((batch, 1), bos, dtype=torch.long))
    if eos is not None:
        parts.append(torch.full((batch, 1), eos, dtype=torch.long))
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class InductionLoss:
    """Mean next-token loss (nats) on the first and second copy of ``R + R``.

    Both halves count the same ``seq_len - 1`` predictions: each copy's tokens 2..L
    predicted from the tokens before them (the first token of each copy is left out:
    nothing in the sequence predicts it). ``gap = first - second``: how much the model
    gains from having seen the sequence before (large in models with induction heads).
    """

    first_half: float
    second_half: float

    @property
    def gap(self) -> float:
        """First-half loss minus second-half loss."""
        return self.first_half - self.second_half

    def to_dict(self) -> dict[str, float]:
        """The losses and the gap as plain floats."""
        return {"first_half": self.first_half, "second_half": self.second_half, "gap": self.gap}


@dataclass
class HeadScores:
    """Detector scores for every head: ``scores[detector]`` is ``[layers, heads]``."""

    scores: dict[str, Float[Tensor, "layers heads"]]
    settings: dict[str, Any] = field(default_factory=dict)
    induction_loss: InductionLoss | None = None
    seconds: float = 0.0

    @property
    def detectors(self) -> list[str]:
        """The detectors that were run, in order."""
        return list(self.scores)

    def _scores(self, detector: str) -> Tensor:
        if detector not in self.scores:
            raise LmscopeError(
                f"no scores for detector {detector!r}; these were run: "
                f"{', '.join(self.scores)}. {did_you_mean(detector, self.scores)}".strip()
            )
        return self.scores[detector]

    def top(self, detector: str, n: int = 10) -> list[tuple[int, int, float]]:
        """The `n` highest-scoring heads as ``(layer, head, score)``, best first (NaN last)."""
        scores = self._scores(detector)
        flat = torch.nan_to_num(scores.flatten(), nan=-math.inf)
        order = flat.argsort(descending=True, stable=True)[:n].tolist()
        n_heads = scores.shape[1]
        return [(i // n_heads, i % n_heads, float(scores.flatten()[i])) for i in order]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: ``layer``, ``head`` and a score per detector."""
        n_layers, n_heads = next(iter(self.scores.values())).shape
        return [
            {"layer": layer, "head": head}
            | {name: float(s[layer, head]) for name, s in self.scores.items()}
            for layer in range(n_layers)
            for head in range(n_heads)
        ]

    def table(self, sort_by: str | None = None, limit: int | None = None) -> Any:
        """A rich `Table` of every head (or the `limit` best by `sort_by`), labelled L.H."""
        from rich.table import Table

        rows = self.rows()
        if sort_by is not None:
            self._scores(sort_by)
            rows.sort(key=lambda r: -math.inf if math.isnan(r[sort_by]) else r[sort_by])
            rows.reverse()
        table = Table(title="Head detector scores (fraction of attention on the target keys)")
        table.add_column("head")
        for name in self.scores:
            table.add_column(name.replace("_", " "), justify="right")
        for row in rows[:limit]:
            cells = [_fmt(row[name]) for name in self.scores]
            table.add_row(f"L{row['layer']}.H{row['head']}", *cells)
        return table

    def plot(self, path: str | Path) -> Path:
        """One heatmap per detector (layers x heads, colour 0..1) written to `path` (PNG)."""
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt

        from lmscope.serialization import atomic_write

        n_layers, n_heads = next(iter(self.scores.values())).shape
        width = min(2.0 + 0.35 * n_heads, 7.0)
        height = min(1.5 + 0.3 * n_layers, 10.0)
        fig, axes = plt.subplots(
            1,
            len(self.scores),
            figsize=(width * len(self.scores) + 1.0, height),
            squeeze=False,
            layout="constrained",
        )
        image = None
        for ax, (name, scores) in zip(axes[0], self.scores.items(), strict=True):
            image = ax.imshow(scores.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(0, n_heads, max(1, n_heads // 12)))
            ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
            if n_layers * n_heads <= 64:  # small grids: print the numbers too
                for (layer, head), value in zip(
                    torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads)).tolist(),
                    scores.flatten().tolist(),
                    strict=True,
                ):
                    colour = "black" if value > 0.6 else "white"
                    ax.text(
                        head, layer, _fmt(value), ha="center", va="center", fontsize=7, color=colour
                    )
        assert image is not None
        fig.colorbar(image, ax=list(axes[0]), shrink=0.85, aspect=30, label="score")
        target = Path(path)
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        return target

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """Scores (nested lists, NaN as None), the `top` heads per detector, settings, loss."""
        return {
            "detectors": self.detectors,
            "scores": {
                name: [[_json_float(v) for v in row] for row in s.tolist()]
                for name, s in self.scores.items()
            },
            "top": {
                name: [
                    {"layer": layer, "head": head, "score": _json_float(score)}
                    for layer, head, score in self.top(name, top)
                ]
                for name in self.scores
            },
            "induction_loss": None
            if self.induction_loss is None
            else self.induction_loss.to_dict(),
            "settings": self.settings,
            "seconds": self.seconds,
        }


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _as_batch(tokens: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> Tensor:
    """Token ids as a ``[batch, pos]`` long tensor (a single sequence becomes batch 1)."""
    ids = tokens if isinstance(tokens, Tensor) else torch.tensor(tokens)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] < 2 or ids.dtype.is_floating_point:
        raise LmscopeError(
            f"tokens must be integer ids of shape [pos] or [batch, pos] with pos >= 2, got "
            f"shape {list(ids.shape)} ({ids.dtype})."
        )
    return ids.long()


def detect_heads(
    model: Any,
    tokens: Tensor | Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    detectors: Sequence[str] = DETECTORS,
    seq_len: int = 50,
    batch: int = 8,
    seed: int = 0,
    bos: int | None = None,
    eos: int | None = None,
    avoid: Collection[int] = (),
) -> HeadScores:
    """Score every head of `model` with each of `detectors` (see the module docstring).

    `tokens` (``[pos]`` or ``[batch, pos]``) are scored as given; by default the model
    reads `batch` sequences ``[bos] + R + R [+ eos]`` with ``len(R) = seq_len`` (see
    `repeated_random_tokens`; `avoid` lists ids never drawn, e.g. special tokens), and
    a decoder with an LM head also reports the `InductionLoss` of that run.
    """
    blocks_of(model)  # a clear error for models without one block stack
    detectors = list(dict.fromkeys(detectors))
    if not detectors:
        raise LmscopeError(f"give at least one head detector: {', '.join(DETECTORS)}.")
    for name in detectors:
        if name not in DETECTORS:
            detection_mask(torch.zeros(1, 1, dtype=torch.long), name)  # raises, with a hint
    cfg = model.cfg
    generated = tokens is None
    if generated:
        ids = repeated_random_tokens(
            cfg.vocab_size, seq_len, batch, seed=seed, bos=bos, eos=eos, avoid=avoid
        )
        settings: dict[str, Any] = {
            "tokens": "repeated random",
            "seq_len": seq_len,
            "batch": batch,
            "seed": seed,
            "bos": bos,
            "eos": eos,
        }
    else:
        ids = _as_batch(tokens)  # type: ignore[arg-type]
        settings = {"tokens": "given", "batch": ids.shape[0], "positions": ids.shape[1]}
    if ids.shape[1] > cfg.max_seq_len:
        raise LmscopeError(
            f"{ids.shape[1]} positions exceed this model's max_seq_len ({cfg.max_seq_len}); "
            "use a shorter seq_len."
        )
    ids = ids.to(model.device)

    # Per detector: the target mask, and which queries have a target (the rows averaged).
    targets = {}
    for name in detectors:
        mask = detection_mask(ids, name)
        rows = mask.any(-1)  # [b, q]
        if rows.any():  # else the score is undefined and stays NaN
            targets[name] = (mask.float(), rows.float()[:, None], int(rows.sum()))
    scores = {name: torch.full((cfg.n_layers, cfg.n_heads), math.nan) for name in detectors}

    def score(pattern: Float[Tensor, "batch head q k"], hook: HookPoint) -> None:
        layer = int(hook.name.split(".")[1])
        p = pattern.float()
        for name, (mask, rows, n_rows) in targets.items():
            # Attention mass each (head, query) puts on its targets: [b, head, q].
            hit = torch.einsum("bhqk,bqk->bhq", p, mask)
            scores[name][layer] = (hit * rows).sum((0, 2)).cpu() / n_rows

    start = time.perf_counter()
    with torch.no_grad():
        out = model.run_with_hooks(
            ids, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), score)]
        )
    loss = None
    if generated and cfg.architecture == "decoder" and out.shape[-1] == cfg.vocab_size:
        loss = _induction_loss(out, ids, seq_len, prefix=int(bos is not None))
    return HeadScores(scores, settings, loss, time.perf_counter() - start)


def _induction_loss(
    logits: Float[Tensor, "batch pos vocab"],
    ids: Int[Tensor, "batch pos"],
    seq_len: int,
    prefix: int,
) -> InductionLoss:
    """Mean next-token loss on each copy of ``R + R`` (see `InductionLoss`)."""

    def half(start: int) -> float:
        # Predictions made at start .. start+L-2 of the tokens start+1 .. start+L-1.
        src = logits[:, start : start + seq_len - 1].float()
        tgt = ids[:, start + 1 : start + seq_len]
        return float(F.cross_entropy(src.reshape(-1, src.shape[-1]), tgt.reshape(-1)))

    return InductionLoss(half(prefix), half(prefix + seq_len))
