"""What each SAE feature responds to and what it does: contexts, quantiles, logit effects.

`collect_features(model, sae, data)` streams token windows through the model (stopping
after the SAE's block) and keeps, per feature, in memory that does not grow with the
corpus:

- its `k` top-activating contexts: a window of tokens around the context's maximum,
  with the feature's activation on every token of the window. Each batch's candidates
  are merged into the running top k (one ``topk`` over old + new), so no activation is
  kept beyond the batch it came from;
- a uniform sample of the contexts it fires in (reservoir sampling with random keys,
  merged the same way: the `n_samples` largest keys), from which
  `FeatureStats.quantile_samples` draws examples across the range of activations
  (weak, medium, strong firings, not just the top);
- its density: the fraction of tokens it fires on.

`logit_effects(model, sae)` reads each decoder direction through the unembedding
(``W_dec[f] * w_ln_final @ W_U``, the final norm's weight included, its scaling left
out): the tokens a feature promotes and suppresses when it fires. `search_features`
finds features by the token they fire on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.hooks import HookedModule
from lmscope.sae.activation_sources import special_position_mask, stop_layer
from lmscope.sae.base import SAE, SAEError
from lmscope.sae.token_source import TokenBatchesLike, token_batches
from lmscope.tokenizers import Tokenizer

#: Token id of window positions outside the context.
PAD = -1


@dataclass
class Example:
    """One context of a feature: a token window and the feature's activation on each token."""

    tokens: list[int]  # PAD (-1) outside the context
    acts: list[float]
    max_act: float
    context: int  # index of the context (window) in the data
    position: int  # position of the maximum in that context

    @property
    def peak(self) -> int:
        """Index in `tokens` of the maximum activation."""
        return max(range(len(self.acts)), key=self.acts.__getitem__)


@dataclass
class _Best:
    """The best `size` entries per feature by a score, with their windows (merged per batch)."""

    score: Tensor  # [F, size]
    value: Tensor  # [F, size] max activation of the context
    tokens: Tensor  # [F, size, W] int32
    acts: Tensor  # [F, size, W]
    where: Tensor  # [F, size, 2] int64: (context, position)

    @classmethod
    def empty(cls, n_features: int, size: int, width: int) -> _Best:
        return cls(
            score=torch.full((n_features, size), -torch.inf),
            value=torch.zeros(n_features, size),
            tokens=torch.full((n_features, size, width), PAD, dtype=torch.int32),
            acts=torch.zeros(n_features, size, width),
            where=torch.zeros(n_features, size, 2, dtype=torch.int64),
        )

    def merge(
        self, score: Tensor, value: Tensor, tokens: Tensor, acts: Tensor, where: Tensor
    ) -> None:
        """Add candidates ([F, b] scores, values; [F, b, W] windows; [F, b, 2] where)."""
        all_score = torch.cat([self.score, score], dim=1)
        keep = all_score.topk(self.score.shape[1], dim=1).indices  # [F, size]
        self.score = all_score.gather(1, keep)
        self.value = torch.cat([self.value, value], 1).gather(1, keep)
        wide = keep[..., None]
        self.tokens = torch.cat([self.tokens, tokens], 1).gather(
            1, wide.expand(-1, -1, tokens.shape[2])
        )
        self.acts = torch.cat([self.acts, acts], 1).gather(1, wide.expand(-1, -1, acts.shape[2]))
        self.where = torch.cat([self.where, where], 1).gather(1, wide.expand(-1, -1, 2))

    def examples(self, row: int) -> list[Example]:
        """Row `row`'s valid entries (best score first)."""
        out = []
        for j in range(self.score.shape[1]):
            if self.score[row, j] == -torch.inf or self.value[row, j] <= 0:
                continue
            context, position = self.where[row, j].tolist()
            out.append(
                Example(
                    tokens=self.tokens[row, j].tolist(),
                    acts=self.acts[row, j].tolist(),
                    max_act=float(self.value[row, j]),
                    context=context,
                    position=position,
                )
            )
        return out


@dataclass
class FeatureStats:
    """What `collect_features` found, for `features` (ids into the SAE's latents)."""

    features: list[int]
    n_tokens: int
    #: Tokens each feature fired on, int64 [F].
    counts: Tensor
    top: _Best
    samples: _Best
    window: tuple[int, int]
    hook_name: str
    logits: dict[str, Tensor] = field(default_factory=dict)

    def row(self, feature: int) -> int:
        """Where `feature` is in this collection's tensors."""
        try:
            return self.features.index(feature)
        except ValueError:
            raise SAEError(
                f"feature {feature} was not collected; collected: {len(self.features)} features "
                f"({self.features[0]}..{self.features[-1]})."
            ) from None

    @property
    def density(self) -> Tensor:
        """Fraction of tokens each feature fired on, float64 [F]."""
        return self.counts.double() / max(self.n_tokens, 1)

    def top_examples(self, feature: int) -> list[Example]:
        """The feature's top-activating contexts, strongest first."""
        return self.top.examples(self.row(feature))

    def quantile_samples(
        self, feature: int, n_quantiles: int = 4, per_quantile: int = 3
    ) -> list[tuple[float, float, list[Example]]]:
        """Examples from `n_quantiles` equal-count bins of the sampled firing contexts,
        weakest bin first: (lowest, highest max activation, examples) per bin."""
        sampled = sorted(self.samples.examples(self.row(feature)), key=lambda e: e.max_act)
        bins = []
        for q in range(n_quantiles):
            part = sampled[q * len(sampled) // n_quantiles : (q + 1) * len(sampled) // n_quantiles]
            if part:
                step = max(1, len(part) // per_quantile)
                bins.append((part[0].max_act, part[-1].max_act, part[::step][:per_quantile]))
        return bins

    def logit_effect(self, feature: int) -> dict[str, list[tuple[int, float]]]:
        """{'promoted': [(token, effect)...], 'suppressed': [...]} (needs `logit_effects`)."""
        if not self.logits:
            return {"promoted": [], "suppressed": []}
        r = self.row(feature)
        return {
            kind: list(
                zip(
                    self.logits[f"{kind}_ids"][r].tolist(),
                    self.logits[kind][r].tolist(),
                    strict=True,
                )
            )
            for kind in ("promoted", "suppressed")
        }


def _windows(
    sel: Float[Tensor, "b ctx F"], tokens: Int[Tensor, "b ctx"], left: int, right: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per context and feature: the max, its position, and the window around it.

    Returns max [b, F], position [b, F], tokens [b, F, W] and activations [b, F, W].
    """
    b, ctx, n = sel.shape
    value, pos = sel.max(dim=1)  # [b, F]
    offsets = torch.arange(-left, right + 1, device=sel.device)
    index = pos[..., None] + offsets  # [b, F, W]
    inside = (index >= 0) & (index < ctx)
    index = index.clamp(0, ctx - 1)
    acts = sel.transpose(1, 2).gather(2, index)  # [b, F, W]: sel[b, index[b, f, w], f]
    window_tokens = tokens[:, None, :].expand(b, n, ctx).gather(2, index)
    return (
        value,
        pos,
        torch.where(inside, window_tokens, PAD).to(torch.int32),
        torch.where(inside, acts, 0.0),
    )


@torch.no_grad()
def collect_features(
    model: HookedModule,
    sae: SAE,
    data: TokenBatchesLike,
    *,
    features: list[int] | None = None,
    k: int = 10,
    n_samples: int = 24,
    window: tuple[int, int] = (24, 8),
    tokenizer: Tokenizer | None = None,
    context_size: int = 128,
    batch_size: int = 8,
    max_contexts: int | None = 512,
    exclude_special: bool | list[int] = True,
    logit_k: int = 10,
    seed: int = 0,
) -> FeatureStats:
    """Top contexts, sampled contexts and density of `features` (default: all) of `sae`.

    `window`: tokens kept (before, after) each example's maximum. `data` as in
    `evaluate_sae`. Special-token positions never count (activation set to 0 there).
    With `logit_k` > 0 the logit effects of the features are computed too.
    """
    name = sae.cfg.hook_name
    if name is None:
        raise SAEError("this SAE's config has no hook_name: it does not say where it reads.")
    chosen = list(range(sae.d_sae)) if features is None else [int(f) for f in features]
    bad = [f for f in chosen if not 0 <= f < sae.d_sae]
    if bad or not chosen:
        raise SAEError(f"features must be in [0, {sae.d_sae}); got {bad or 'none'}.")
    left, right = window
    if left < 0 or right < 0:
        raise SAEError(f"window sizes must be >= 0, got {window}.")
    batches, excluded = token_batches(
        data, tokenizer=tokenizer, context_size=context_size, batch_size=batch_size,
        max_contexts=max_contexts, exclude_special=exclude_special,
    )  # fmt: skip
    device = next(model.parameters()).device
    width = left + right + 1
    top = _Best.empty(len(chosen), k, width)
    samples = _Best.empty(len(chosen), n_samples, width)
    counts = torch.zeros(len(chosen), dtype=torch.int64)
    index = torch.tensor(chosen)
    generator = torch.Generator().manual_seed(seed)
    n_tokens = seen_contexts = 0
    stop = stop_layer(model, [name])
    for tokens in batches:
        _, cache = model.run_with_cache(tokens.to(device), names_filter=name, stop_at_layer=stop)
        keep = special_position_mask(tokens, excluded)
        sel = sae.encode(cache[name]).float().cpu()[..., index] * keep[..., None]  # [b, ctx, F]
        counts += (sel > 0).sum((0, 1))
        n_tokens += int(keep.sum())
        value, pos, win_tokens, win_acts = (
            t.transpose(0, 1) for t in _windows(sel, tokens, left, right)
        )
        b = tokens.shape[0]
        contexts = torch.arange(seen_contexts, seen_contexts + b)[None, :].expand(len(chosen), -1)
        where = torch.stack([contexts, pos], dim=-1)
        top.merge(value, value, win_tokens, win_acts, where)
        # Reservoir: every firing context gets a uniform key; the largest keys are kept.
        key = torch.rand(value.shape, generator=generator)
        samples.merge(torch.where(value > 0, key, -torch.inf), value, win_tokens, win_acts, where)
        seen_contexts += b
    stats = FeatureStats(chosen, n_tokens, counts, top, samples, window, name)
    if logit_k > 0 and _writes_residual(model, sae):
        stats.logits = logit_effects(model, sae, chosen, logit_k)
    return stats


def _writes_residual(model: HookedModule, sae: SAE) -> bool:
    """Whether the SAE's output lives in the residual stream's width (logit effects apply)."""
    return hasattr(model, "unembed") and sae.cfg.output_dim == model.cfg.d_model  # type: ignore[attr-defined]


@torch.no_grad()
def logit_effects(
    model: HookedModule, sae: SAE, features: list[int] | None = None, k: int = 10, chunk: int = 256
) -> dict[str, Tensor]:
    """Top `k` promoted / suppressed tokens of each feature's decoder direction.

    ``effect[f] = (W_dec[f] * w) @ W_U`` with ``w`` the final norm's weight (offset
    included) when it has one. Computed `chunk` features at a time; returns
    'promoted' / 'suppressed' [F, k] effects and 'promoted_ids' / 'suppressed_ids'.
    """
    chosen = list(range(sae.d_sae)) if features is None else features
    W_U = model.W_U  # type: ignore[attr-defined]
    norm = getattr(model, "ln_final", None)
    weight = getattr(norm, "weight", None)
    scale = None if weight is None else weight + getattr(norm, "weight_offset", 0.0)
    out: dict[str, list[Tensor]] = {
        "promoted": [],
        "promoted_ids": [],
        "suppressed": [],
        "suppressed_ids": [],
    }
    k = min(k, W_U.shape[1])
    for start in range(0, len(chosen), chunk):
        rows = sae.W_dec[chosen[start : start + chunk]].to(W_U.dtype)
        effect = ((rows * scale) if scale is not None else rows) @ W_U  # [chunk, vocab]
        hi, lo = effect.topk(k, dim=1), effect.topk(k, dim=1, largest=False)
        out["promoted"].append(hi.values.float().cpu())
        out["promoted_ids"].append(hi.indices.cpu())
        out["suppressed"].append(lo.values.float().cpu())
        out["suppressed_ids"].append(lo.indices.cpu())
    return {key: torch.cat(parts) for key, parts in out.items()}


def search_features(
    stats: FeatureStats,
    token: int | str,
    tokenizer: Tokenizer | None = None,
    *,
    min_fraction: float = 0.5,
) -> list[dict[str, Any]]:
    """Features that fire on `token` (an id, or text encoding to one token).

    A feature matches when, in at least `min_fraction` of its top contexts, its maximum
    falls on `token`; matches are ranked by their mean activation on `token` over all
    its occurrences in those contexts. Returns dicts: feature, mean_activation,
    fraction, density.
    """
    target = _token_id(token, tokenizer)
    found = []
    for row, feature in enumerate(stats.features):
        valid = (stats.top.score[row] > -torch.inf) & (stats.top.value[row] > 0)
        if not valid.any():
            continue
        tokens, acts = stats.top.tokens[row][valid], stats.top.acts[row][valid]
        peaks = tokens.gather(1, acts.argmax(1, keepdim=True))[:, 0]
        fraction = float((peaks == target).float().mean())
        if fraction < min_fraction:
            continue
        on_token = acts[tokens == target]
        found.append(
            {
                "feature": feature,
                "mean_activation": float(on_token.mean()),
                "fraction": fraction,
                "density": float(stats.density[row]),
            }
        )
    return sorted(found, key=lambda m: -m["mean_activation"])


def _token_id(token: int | str, tokenizer: Tokenizer | None) -> int:
    """The id `token` names, or a clear error when it is not exactly one token."""
    if isinstance(token, int):
        return token
    if tokenizer is None:
        raise SAEError(f"searching for {token!r} needs the model's tokenizer (or pass a token id).")
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        pieces = [tokenizer.id_to_token(i) for i in ids]
        raise SAEError(
            f"{token!r} is {len(ids)} tokens ({pieces}); search for one token, e.g. {pieces[:1]}."
        )
    return ids[0]


__all__ = [
    "PAD",
    "Example",
    "FeatureStats",
    "collect_features",
    "logit_effects",
    "search_features",
]
