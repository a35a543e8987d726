"""The measured effect of a steering vector: how target tokens' log-probabilities move.

For each coefficient, `steering_effect` runs the prompts under `steer` and reads the
log-probability of each target word (a single token) as the *next* token after each
prompt, averaged over prompts. The effect is the change from coefficient 0 (the
unsteered model). Optionally it also generates a continuation of each prompt under the
same steering and averages the targets' log-probabilities over the positions of the
continuation (the distributions the new tokens were drawn from), which catches steering
that acts later than the first token; with ``positions="new"`` the prompt is never
steered and this is the only measure that moves.

Log-probabilities are averaged as log-probabilities (a mean of logs, not the log of a
mean probability), as in ActAdd's reported log-prob changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.generate import generate
from lmscope.generate.prompts import Prompts, left_pad, prompt_rows
from lmscope.interpret.steering import SteeringVector, SteerPositions, steer
from lmscope.interpret.tokens import single_token_id, token_label


@dataclass(frozen=True)
class TargetToken:
    """A target word (one token) and its readable label."""

    word: str
    token_id: int
    label: str


def target_tokens(
    tokenizer: Any | None, words: Sequence[str | int], vocab_size: int
) -> list[TargetToken]:
    """Each word as its single token (encoded as written: mind the leading space)."""
    out = []
    for word in words:
        token = single_token_id(word, tokenizer, vocab_size, what="target word")
        out.append(TargetToken(str(word), token, token_label(tokenizer, token)))
    return out


@dataclass
class SteeringEffect:
    """Log-probabilities of targets per coefficient, and their change from coefficient 0.

    Tensors are [coefficient, word], means over prompts (continuation: over prompts and
    generated positions). `coefficients` are sorted and include 0, the reference.
    """

    coefficients: list[float]
    targets: list[TargetToken]
    target_logprob: Float[Tensor, "coef target"]
    baselines: list[TargetToken] | None = None
    baseline_logprob: Float[Tensor, "coef baseline"] | None = None
    continuation_logprob: Float[Tensor, "coef target"] | None = None
    continuations: dict[float, list[str]] | None = None

    def _delta(self, logprob: Tensor) -> Tensor:
        """Mean over words, minus its value at coefficient 0."""
        mean = logprob.mean(1)
        return mean - mean[self.coefficients.index(0.0)]

    def rows(self) -> list[dict[str, Any]]:
        """One row per coefficient: mean log-probs and their changes from coefficient 0."""
        delta = self._delta(self.target_logprob)
        rows = []
        for i, c in enumerate(self.coefficients):
            row: dict[str, Any] = {
                "coefficient": c,
                "target_logprob": float(self.target_logprob[i].mean()),
                "delta": float(delta[i]),
                "per_target_delta": {
                    t.word: float(self.target_logprob[i, j] - self.target_logprob[self._zero, j])
                    for j, t in enumerate(self.targets)
                },
            }
            if self.baseline_logprob is not None:
                base = self._delta(self.baseline_logprob)
                row["baseline_logprob"] = float(self.baseline_logprob[i].mean())
                row["baseline_delta"] = float(base[i])
                row["delta_vs_baseline"] = float(delta[i] - base[i])
            if self.continuation_logprob is not None:
                row["continuation_logprob"] = float(self.continuation_logprob[i].mean())
                row["continuation_delta"] = float(self._delta(self.continuation_logprob)[i])
            rows.append(row)
        return rows

    @property
    def _zero(self) -> int:
        return self.coefficients.index(0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the targets, the rows, and the continuations when generated."""
        out: dict[str, Any] = {
            "targets": [vars(t) for t in self.targets],
            "baselines": [vars(t) for t in self.baselines] if self.baselines else None,
            "rows": self.rows(),
        }
        if self.continuations is not None:
            out["continuations"] = {str(c): texts for c, texts in self.continuations.items()}
        return out

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a PNG: change in mean target log-probability against the coefficient."""
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        c = self.coefficients
        zero = self.target_logprob[self._zero]
        for j, target in enumerate(self.targets):
            ax.plot(
                c,
                (self.target_logprob[:, j] - zero[j]).tolist(),
                lw=0.8,
                alpha=0.5,
                label=f"{target.label}",
            )
        ax.plot(
            c,
            self._delta(self.target_logprob).tolist(),
            "o-",
            lw=2.5,
            color="black",
            label="targets (mean)",
        )
        if self.baseline_logprob is not None:
            ax.plot(
                c,
                self._delta(self.baseline_logprob).tolist(),
                "s--",
                lw=2,
                color="grey",
                label="baseline words (mean)",
            )
        if self.continuation_logprob is not None:
            ax.plot(
                c,
                self._delta(self.continuation_logprob).tolist(),
                "^-",
                lw=2,
                color="tab:red",
                label="targets over continuation",
            )
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("steering coefficient")
        ax.set_ylabel("Δ log-probability vs coefficient 0")
        ax.set_title(title or "Steering effect on target tokens")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def _next_logprobs(
    model: Any,
    tokens: Tensor,
    mask: Tensor | None,
    read_from: int,
    vector: SteeringVector,
    coefficient: float,
    positions: SteerPositions,
) -> Float[Tensor, "batch pos vocab"]:
    """Log-softmax of the steered model's logits at columns ``read_from:``.

    `read_from` is the prompts' last column: under "new", generation steered exactly the
    columns after it, which is what an index reproduces without a KV cache.
    """
    if positions == "new":
        positions = read_from + 1
    with torch.no_grad(), steer(model, vector, coefficient, positions=positions):
        logits = model(tokens, attention_mask=mask)
    return logits[:, read_from:].double().log_softmax(-1)


def steering_effect(
    model: Any,
    tokenizer: Any | None,
    prompts: Prompts,
    vector: SteeringVector,
    coefficients: Sequence[float],
    target_words: Sequence[str | int],
    *,
    baseline_words: Sequence[str | int] | None = None,
    positions: SteerPositions = "all",
    continuation_tokens: int = 0,
    **gen_kwargs: Any,
) -> SteeringEffect:
    """Log-probability of `target_words` (and `baseline_words`) under each coefficient.

    Next-token log-probabilities at the end of each prompt, averaged over prompts; with
    ``continuation_tokens > 0`` also averaged over a continuation of that many tokens
    generated under the same steering (`gen_kwargs` go to `generate`; greedy unless a
    temperature is given; end-of-sequence does not stop it, so every continuation has
    the same length). Coefficient 0 is added when absent: it is the reference.
    """
    vocab = model.cfg.vocab_size
    targets = target_tokens(tokenizer, target_words, vocab)
    if not targets:
        raise LmscopeError("give at least one target word.")
    baselines = target_tokens(tokenizer, baseline_words, vocab) if baseline_words else None
    coefs = sorted({float(c) for c in coefficients} | {0.0})
    rows = prompt_rows(prompts, tokenizer)
    device = next(model.parameters()).device
    tokens, mask = left_pad(rows, 0, device)
    ids = [t.token_id for t in targets] + [t.token_id for t in baselines or []]
    was_training = model.training
    model.eval()
    try:
        at_end, over_continuation, texts = [], [], {}
        for c in coefs:
            logp = _next_logprobs(model, tokens, mask, tokens.shape[1] - 1, vector, c, positions)
            at_end.append(logp[:, 0, ids].mean(0))
            if continuation_tokens > 0:
                result = _continue(
                    model, tokenizer, rows, vector, c, positions, continuation_tokens, gen_kwargs
                )
                new = torch.tensor(result.new_tokens, device=device)
                full = torch.cat([tokens, new], dim=1)
                full_mask = None if mask is None else torch.cat([mask, torch.ones_like(new)], 1)
                # Distributions that chose new tokens 0..k-1: columns P-1 .. P+k-2.
                logp = _next_logprobs(
                    model,
                    full[:, :-1],
                    None if full_mask is None else full_mask[:, :-1],
                    tokens.shape[1] - 1,
                    vector,
                    c,
                    positions,
                )
                over_continuation.append(logp[..., ids[: len(targets)]].mean((0, 1)))
                if result.texts is not None:
                    texts[c] = result.texts
    finally:
        model.train(was_training)
    table = torch.stack(at_end).float()
    n = len(targets)
    return SteeringEffect(
        coefficients=coefs,
        targets=targets,
        target_logprob=table[:, :n],
        baselines=baselines,
        baseline_logprob=table[:, n:] if baselines else None,
        continuation_logprob=torch.stack(over_continuation).float() if over_continuation else None,
        continuations=texts or None,
    )


def _continue(
    model: Any,
    tokenizer: Any | None,
    rows: list[list[int]],
    vector: SteeringVector,
    coefficient: float,
    positions: SteerPositions,
    n_tokens: int,
    gen_kwargs: dict[str, Any],
) -> Any:
    """A fixed-length steered continuation of every prompt."""
    if gen_kwargs.get("num_samples", 1) != 1:
        raise LmscopeError("steering_effect generates one continuation per prompt (num_samples=1).")
    # Fixed length: neither end-of-sequence nor a stop string may end a row early.
    kwargs = {**gen_kwargs, "eos_token_id": [], "stop": None, "max_new_tokens": n_tokens}
    with steer(model, vector, coefficient, positions=positions):
        return generate(model, rows, tokenizer=tokenizer, **kwargs)


__all__ = ["SteeringEffect", "TargetToken", "steering_effect", "target_tokens"]
