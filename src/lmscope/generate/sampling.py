"""Choosing the next token: logits processors as small pure functions, then argmax or a draw.

The processors follow Hugging Face's definitions, value for value (the tests compare
them with `transformers`' ``RepetitionPenaltyLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``), and run in
the same order: repetition penalty, then temperature, top-k, top-p. A removed token
gets ``-inf``, so it has probability 0 after the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lmscope.generate.errors import GenerationError


def apply_repetition_penalty(
    logits: Float[Tensor, "batch vocab"], seen: Bool[Tensor, "batch vocab"], penalty: float
) -> Float[Tensor, "batch vocab"]:
    """Make tokens already in the sequence less likely (CTRL, Keskar et al. 2019).

    A seen token's positive logit is divided by `penalty`, a negative one multiplied
    by it, so ``penalty > 1`` always lowers it (dividing a negative logit would raise
    it: Hugging Face's rule, which this copies).
    """
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(
    logits: Float[Tensor, "batch vocab"], temperature: float
) -> Float[Tensor, "batch vocab"]:
    """Divide by `temperature`: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def apply_top_k(logits: Float[Tensor, "batch vocab"], k: int) -> Float[Tensor, "batch vocab"]:
    """Keep the `k` largest logits of each row (and any tied with the k-th), -inf the rest."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Float[Tensor, "batch vocab"], p: float) -> Float[Tensor, "batch vocab"]:
    """Nucleus filtering (Holtzman et al. 2019): keep the most likely tokens whose
    probabilities add up to at least `p`, always at least one.

    Computed as Hugging Face does: sort ascending and drop the low tail whose cumulative
    probability stays ``<= 1 - p``.
    """
    ascending, order = torch.sort(logits, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1:] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def seen_mask(
    tokens: Int[Tensor, "batch pos"], vocab_size: int, valid: Bool[Tensor, "batch pos"] | None
) -> Bool[Tensor, "batch vocab"]:
    """Which vocabulary entries occur in each row of `tokens` (padding, ``valid=False``, not)."""
    counts = torch.zeros(tokens.shape[0], vocab_size, dtype=torch.long, device=tokens.device)
    weights = torch.ones_like(tokens) if valid is None else valid.long()
    # scatter_add, not scatter: a pad id equal to a real token must not erase it.
    return counts.scatter_add_(1, tokens, weights) > 0


@dataclass(frozen=True)
class SamplingSettings:
    """How `next_tokens` picks a token; ``temperature`` 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k={self.top_k} must be >= 1 (or None for no limit)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1] (or None for no limit)")
        if self.repetition_penalty <= 0:
            problems.append(
                f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = no penalty)"
            )
        if problems:
            raise GenerationError("invalid sampling settings: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        """Whether the next token is the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def uses_seen(self) -> bool:
        """Whether the processors need to know which tokens each sequence has seen."""
        return self.repetition_penalty != 1.0


def next_tokens(
    logits: Float[Tensor, "batch vocab"],
    settings: SamplingSettings,
    *,
    seen: Bool[Tensor, "batch vocab"] | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row: argmax when greedy, else a draw from the processed distribution.

    `generator` makes draws reproducible; None uses torch's global generator.
    """
    # Processors run in float32 whatever the model's dtype, as Hugging Face's do.
    logits = logits.float()
    if settings.uses_seen:
        if seen is None:
            raise GenerationError(
                "a repetition penalty needs `seen` (the tokens of each sequence)."
            )
        logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.greedy:
        return logits.argmax(dim=-1)
    if settings.temperature != 1.0:
        logits = apply_temperature(logits, settings.temperature)
    if settings.top_k is not None:
        logits = apply_top_k(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        logits = apply_top_p(logits, settings.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
