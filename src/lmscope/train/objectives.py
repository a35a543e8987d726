"""Training objectives: what the model is asked to predict from a window of tokens.

- next-token (GPT): predict token t+1 from tokens <= t.
- masked-lm (BERT, Devlin et al. 2019): 15% of positions are chosen; of those 80% become
  ``[MASK]``, 10% a random token, 10% stay; the model predicts the originals there.
- span-corruption (T5, Raffel et al. 2020): 15% of tokens, in spans of mean length 3,
  are cut out of the encoder input, each span replaced by a sentinel; the decoder writes
  ``sentinel_0 span_0 sentinel_1 span_1 ... eos``.

Objectives that need tokens the tokenizer lacks (mask, sentinels) use ids just above
its vocabulary (`extra_tokens` of them), so any tokenizer works with any objective.

Losses are returned as sums with their token counts, so that micro-batches and devices
combine into exactly the mean over the whole batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from lmscope.errors import LmscopeError

IGNORE = -100  # label of positions that do not count in the loss


@dataclass
class Batch:
    """Model inputs and labels of one batch (every tensor has the batch first)."""

    inputs: dict[str, Tensor]
    labels: Int[Tensor, "batch pos"]

    def rows(self, start: int, stop: int) -> Batch:
        """The sub-batch of rows ``start:stop``."""
        return Batch({k: v[start:stop] for k, v in self.inputs.items()}, self.labels[start:stop])

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.labels.to(device))

    @property
    def n_targets(self) -> int:
        """Positions that count in the loss."""
        return int((self.labels != IGNORE).sum())


def loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed cross-entropy over positions whose label is not ignored (computed in fp32)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


class Objective:
    """Turns token windows ``[batch, block + 1]`` into a `Batch`, and runs the model on it."""

    name = "objective"
    extra_tokens = 0

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size  # the tokenizer's; extra ids start here

    def make(self, windows: Tensor, generator: torch.Generator) -> Batch:
        """The batch for `windows`, drawing any randomness from `generator`."""
        raise NotImplementedError

    def logits(self, model: nn.Module, batch: Batch) -> Tensor:
        """Run `model` on the batch's inputs."""
        return model(**batch.inputs)

    def special_tokens(self) -> dict[str, int]:
        """Names of the extra ids this objective reserves."""
        return {}


class NextToken(Objective):
    """Causal language modelling."""

    name = "next-token"

    def make(self, windows: Tensor, generator: torch.Generator) -> Batch:
        return Batch({"tokens": windows[:, :-1]}, windows[:, 1:])


class MaskedLM(Objective):
    """BERT's masked language modelling with 80/10/10 corruption."""

    name = "masked-lm"
    extra_tokens = 1

    def __init__(self, vocab_size: int, fraction: float = 0.15) -> None:
        super().__init__(vocab_size)
        self.fraction = fraction
        self.mask_id = vocab_size

    def special_tokens(self) -> dict[str, int]:
        return {"[MASK]": self.mask_id}

    def make(self, windows: Tensor, generator: torch.Generator) -> Batch:
        tokens = windows[:, :-1]
        u = torch.rand(tokens.shape, generator=generator)
        chosen = u < self.fraction
        labels = torch.where(chosen, tokens, IGNORE)
        # Within the chosen positions, u / fraction is again uniform on [0, 1).
        v = u / self.fraction
        random_ids = torch.randint(0, self.vocab_size, tokens.shape, generator=generator)
        corrupted = torch.where(chosen & (v < 0.8), self.mask_id, tokens)
        corrupted = torch.where(chosen & (v >= 0.8) & (v < 0.9), random_ids, corrupted)
        return Batch({"tokens": corrupted}, labels)


class SpanCorruption(Objective):
    """T5's span corruption with a fixed number of spans per window."""

    name = "span-corruption"

    def __init__(
        self, vocab_size: int, block_size: int, fraction: float = 0.15, mean_span: float = 3.0
    ) -> None:
        super().__init__(vocab_size)
        self.n_noise = max(1, round(block_size * fraction))
        # Each span and each gap between spans holds at least one token.
        spans = round(self.n_noise / mean_span)
        self.n_spans = max(1, min(spans, self.n_noise, block_size - self.n_noise))
        if self.n_noise >= block_size:
            raise LmscopeError(f"span corruption of {fraction:.0%} leaves no input tokens.")
        self.start_id = vocab_size  # decoder start (and padding)
        self.eos_id = vocab_size + 1
        self.sentinel = vocab_size + 2  # sentinel_i = self.sentinel + i
        self.extra_tokens = 2 + self.n_spans

    def special_tokens(self) -> dict[str, int]:
        names = {"<start>": self.start_id, "</s>": self.eos_id}
        names.update({f"<extra_id_{i}>": self.sentinel + i for i in range(self.n_spans)})
        return names

    def _split(self, total: int, parts: int, generator: torch.Generator) -> list[int]:
        """`total` as `parts` positive lengths, uniformly at random."""
        cuts = torch.randperm(total - 1, generator=generator)[: parts - 1] + 1
        edges = [0, *sorted(cuts.tolist()), total]
        return [b - a for a, b in itertools.pairwise(edges)]

    def make(self, windows: Tensor, generator: torch.Generator) -> Batch:
        tokens = windows[:, :-1]
        block = tokens.shape[1]
        sources, targets = [], []
        for row in tokens.tolist():
            noise = self._split(self.n_noise, self.n_spans, generator)
            keep = self._split(block - self.n_noise, self.n_spans, generator)
            source, target, pos = [], [], 0
            for i, (k, n) in enumerate(zip(keep, noise, strict=True)):
                source += row[pos : pos + k]
                pos += k
                source.append(self.sentinel + i)
                target += [self.sentinel + i, *row[pos : pos + n]]
                pos += n
            sources.append([*source, self.eos_id])
            targets.append([*target, self.eos_id])
        target = torch.tensor(targets)
        decoder_in = torch.cat([torch.full_like(target[:, :1], self.start_id), target[:, :-1]], 1)
        return Batch({"tokens": torch.tensor(sources), "decoder_tokens": decoder_in}, target)


def make_objective(
    kind: str,
    architecture: str,
    vocab_size: int,
    block_size: int,
    fraction: float,
    mean_span: float,
) -> Objective:
    """The objective `kind` ('auto' picks by `architecture`) for a tokenizer's vocabulary."""
    if kind == "auto":
        kind = {"decoder": "next-token", "encoder": "masked-lm"}.get(
            architecture, "span-corruption"
        )
    fits = {
        "next-token": ("decoder",),
        "masked-lm": ("encoder",),
        "span-corruption": ("encoder-decoder",),
    }
    if architecture not in fits[kind]:
        raise LmscopeError(
            f"objective {kind!r} does not fit a {architecture} model; use objective='auto' "
            "(next-token for decoders, masked-lm for encoders, span-corruption for "
            "encoder-decoders)."
        )
    if kind == "next-token":
        return NextToken(vocab_size)
    if kind == "masked-lm":
        return MaskedLM(vocab_size, fraction)
    return SpanCorruption(vocab_size, block_size, fraction, mean_span)
