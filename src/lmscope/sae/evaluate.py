"""How good an SAE is: reconstruction, sparsity, and what splicing it in costs the model.

`evaluate_sae(model, sae, data)` streams token windows through the model and measures,
over every non-special position:

- L0 (mean active latents), MSE (per element) and FVU (fraction of variance
  unexplained, against the mean over all evaluated tokens), with `lmscope.sae.metrics`'
  definitions (FVU is accumulated across batches, so it equals `metrics.fvu` on all the
  activations at once);
- next-token cross-entropy of the clean model, of the model with the SAE's
  reconstruction *replacing* the activation (no error term), and with the activation
  zero-ablated; ``loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)``:
  1 when the SAE loses nothing, 0 when it is no better than deleting the activation;
- feature density (fraction of tokens each latent fires on) and the dead / dense
  fractions, for `plot_feature_density` (a log10-density histogram, PNG).

A transcoder reads ``hook_name`` and is compared with, spliced into and ablated at its
``hook_name_out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.hooks import HookedModule, HookPoint
from lmscope.sae import metrics
from lmscope.sae.activation_sources import special_position_mask
from lmscope.sae.base import SAE, SAEError
from lmscope.sae.splice import splice_sae
from lmscope.sae.token_source import TokenBatchesLike, token_batches
from lmscope.serialization import atomic_write
from lmscope.tokenizers import Tokenizer


@dataclass
class SAEEvaluation:
    """`evaluate_sae`'s measurements (losses in nats per token)."""

    n_tokens: int
    l0: float
    mse: float
    fvu: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    dead_fraction: float
    dense_fraction: float
    #: Fraction of evaluated tokens each latent fired on, float64 [d_sae].
    density: Tensor

    @property
    def loss_recovered(self) -> float:
        """``(CE_zero - CE_spliced) / (CE_zero - CE_clean)`` (NaN when the two baselines tie)."""
        gap = self.ce_zero - self.ce_clean
        return (self.ce_zero - self.ce_spliced) / gap if gap != 0 else float("nan")

    @property
    def explained_variance(self) -> float:
        """``1 - fvu``."""
        return 1.0 - self.fvu

    def to_dict(self) -> dict[str, Any]:
        """Every scalar (not the per-latent density), for JSON."""
        return {
            "n_tokens": self.n_tokens,
            "l0": self.l0,
            "mse": self.mse,
            "fvu": self.fvu,
            "explained_variance": self.explained_variance,
            "ce_clean": self.ce_clean,
            "ce_spliced": self.ce_spliced,
            "ce_zero": self.ce_zero,
            "loss_recovered": self.loss_recovered,
            "dead_fraction": self.dead_fraction,
            "dense_fraction": self.dense_fraction,
        }


class _Sums:
    """Running sums for L0, MSE, FVU and firing counts over all evaluated tokens."""

    def __init__(self, d_sae: int, d_out: int) -> None:
        self.n = 0
        self.active = 0.0
        self.sq_error = 0.0
        self.target_sum = torch.zeros(d_out, dtype=torch.float64)
        self.target_sq = 0.0
        self.counts = torch.zeros(d_sae, dtype=torch.int64)
        self.d_out = d_out

    def add(self, acts: Tensor, recon: Tensor, target: Tensor) -> None:
        n = acts.shape[0]
        self.n += n
        self.active += float(metrics.l0(acts)) * n
        self.sq_error += float((recon.double() - target.double()).pow(2).sum())
        self.target_sum += target.double().sum(0).cpu()
        self.target_sq += float(target.double().pow(2).sum())
        self.counts += metrics.firing_counts(acts).cpu()

    def fvu(self) -> float:
        # sum (y - mean)^2 = sum y^2 - n |mean|^2, in float64 to keep the difference exact.
        variance = self.target_sq - float(self.target_sum.pow(2).sum()) / max(self.n, 1)
        return self.sq_error / variance if variance > 0 else float("nan")


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> tuple[float, int]:
    """Summed next-token cross-entropy of `logits` on `tokens`, and how many predictions."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return float(F.cross_entropy(pred, tokens[:, 1:].reshape(-1), reduction="sum")), pred.shape[0]


@torch.no_grad()
def evaluate_sae(
    model: HookedModule,
    sae: SAE,
    data: TokenBatchesLike,
    *,
    tokenizer: Tokenizer | None = None,
    context_size: int = 128,
    batch_size: int = 8,
    max_contexts: int | None = 64,
    exclude_special: bool | list[int] = True,
    dense_threshold: float = 0.1,
) -> SAEEvaluation:
    """Evaluate `sae` at its hook of `model` on up to `max_contexts` windows of `data`.

    `data`: an `ActivationStore` (its token source), `TokenWindows`, token rows [n, ctx],
    or text / prepared data / token tensors (read with `tokenizer`, `context_size`).
    Statistics skip special-token positions (`exclude_special`); losses cover every
    next-token prediction. `dense_threshold`: density above which a latent is dense.
    """
    in_name = sae.cfg.hook_name
    if in_name is None:
        raise SAEError("this SAE's config has no hook_name: it does not say where it reads.")
    out_name = sae.cfg.hook_name_out if sae.cfg.is_transcoder else in_name
    assert out_name is not None
    batches, excluded = token_batches(
        data,
        tokenizer=tokenizer,
        context_size=context_size,
        batch_size=batch_size,
        max_contexts=max_contexts,
        exclude_special=exclude_special,
    )
    device = next(model.parameters()).device
    sums = _Sums(sae.d_sae, sae.cfg.output_dim)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_predictions = 0
    for tokens in batches:
        tokens = tokens.to(device)
        seen: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint, seen: dict[str, Tensor] = seen) -> None:
            seen[hook.name] = x

        with model.hooks([(in_name, keep), (out_name, keep)]):
            clean_logits = model(tokens)
        loss, n = next_token_loss(clean_logits, tokens)
        losses["clean"] += loss
        n_predictions += n
        mask = special_position_mask(tokens, excluded)
        x, target = seen[in_name][mask], seen[out_name][mask]
        acts = sae.encode(x)
        recon = sae(x) if sae.cfg.is_transcoder else sae.decode(acts)
        sums.add(acts, recon.to(target.dtype), target)
        with splice_sae(model, sae, keep_error=False):
            losses["spliced"] += next_token_loss(model(tokens), tokens)[0]
        with model.hooks([(out_name, lambda y, _h: torch.zeros_like(y))]):
            losses["zero"] += next_token_loss(model(tokens), tokens)[0]
    if sums.n == 0:
        raise SAEError("no tokens to evaluate on: the data is empty or all special tokens.")
    density = metrics.feature_density(sums.counts, sums.n)
    return SAEEvaluation(
        n_tokens=sums.n,
        l0=sums.active / sums.n,
        mse=sums.sq_error / (sums.n * sums.d_out),
        fvu=sums.fvu(),
        ce_clean=losses["clean"] / n_predictions,
        ce_spliced=losses["spliced"] / n_predictions,
        ce_zero=losses["zero"] / n_predictions,
        dead_fraction=metrics.dead_fraction(density),
        dense_fraction=metrics.dense_fraction(density, dense_threshold),
        density=density,
    )


def plot_feature_density(
    density: Float[Tensor, " d_sae"], path: str | Path, *, title: str = "", bins: int = 50
) -> Path:
    """Histogram of log10 feature density (dead latents counted in the title) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    density = density.detach().double().cpu()
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if alive.numel():
        ax.hist(alive.log10().numpy(), bins=bins, color="#3b6ea8")
    ax.set_xlabel("log10 feature density (fraction of tokens the latent fires on)")
    ax.set_ylabel("latents")
    dead = int((density == 0).sum())
    ax.set_title(f"{title}  ({dead} of {density.numel()} latents dead)".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


__all__ = ["SAEEvaluation", "evaluate_sae", "next_token_loss", "plot_feature_density"]
