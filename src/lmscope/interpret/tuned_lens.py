"""The tuned lens (Belrose et al., 2023): a learned affine translator per layer.

The logit lens reads stream l as if it were the last one, but intermediate streams live
in a slightly different basis (and scale) than the final one, so early read-outs are
biased. The tuned lens inserts, before the final norm and unembedding, an affine map

    translator_l(h) = h + A_l h + b_l        (A_l: [d_model, d_model], b_l: [d_model])

per row l of `accumulated_resid` (0 = embeddings .. n_layers = the output), trained on
the model's own activations to minimise ``KL(p_final || p_lens_l)``, the divergence
from the model's real next-token distribution, with the model frozen. ``A`` and ``b``
start at zero, so an untrained tuned lens *is* the logit lens (bit for bit), and the
output row's translator has nothing to learn (its loss is zero at the identity).

Training follows the paper: SGD with Nesterov momentum 0.9, lr 1.0 decayed linearly to
zero, weight decay 1e-3, loss averaged over positions and rows. Each row's loss is
backpropagated on its own: rows share no parameters, and this keeps one row's
``[batch, pos, vocab]`` logits alive at a time instead of all of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from lmscope.errors import LmscopeError
from lmscope.interpret.logit_lens import LensNorm, LensResult, resid_names, run_lens
from lmscope.interpret.readout import check_readout_model, readout_logits
from lmscope.interpret.tokens import Prompt, TokenSpec
from lmscope.serialization import read_safetensors, write_json, write_safetensors

FORMAT = "lmscope-tuned-lens"
FORMAT_VERSION = 1
CONFIG_FILE = "tuned_lens.json"
WEIGHTS_FILE = "tuned_lens.safetensors"


class TunedLens(nn.Module):
    """One affine translator per lens row (``n_layers + 1`` of them), identity at start."""

    def __init__(self, d_model: int, n_layers: int, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers + 1))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        #: What the lens was trained on and how (steps, lr, losses...), saved with it.
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def for_model(cls, model: Any) -> TunedLens:
        """An untrained (identity) lens shaped for `model`, on its device, in float32."""
        return cls(model.cfg.d_model, model.cfg.n_layers).to(model.device)

    def check_model(self, model: Any) -> None:
        """Refuse a model of another shape than the one this lens was made for."""
        shape = (model.cfg.d_model, model.cfg.n_layers)
        if shape != (self.d_model, self.n_layers):
            raise LmscopeError(
                f"this tuned lens is for d_model={self.d_model}, n_layers={self.n_layers}; "
                f"the model has d_model={shape[0]}, n_layers={shape[1]}."
            )

    def matrix(self, layer: int) -> Float[Tensor, "d_model d_model"]:
        """Translator `layer`'s linear map ``I + A`` (acting as ``h @ M.T``)."""
        weight = self.translators[layer].weight
        return torch.eye(self.d_model, device=weight.device) + weight

    def forward(
        self, layer: int, resid: Float[Tensor, "*batch d_model"]
    ) -> Float[Tensor, "*batch d_model"]:
        """``resid + A_layer resid + b_layer`` (computed in float32, cast back)."""
        if not 0 <= layer <= self.n_layers:
            raise LmscopeError(f"lens row {layer} does not exist: use 0..{self.n_layers}.")
        h = resid.float()
        return (h + self.translators[layer](h)).to(resid.dtype)

    def save(self, directory: str | Path) -> Path:
        """Write ``tuned_lens.safetensors`` and ``tuned_lens.json`` into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_safetensors(state, out / WEIGHTS_FILE, metadata={"format": FORMAT})
        config = {"format": FORMAT, "version": FORMAT_VERSION, "d_model": self.d_model}
        write_json(out / CONFIG_FILE, {**config, "n_layers": self.n_layers, "info": self.info})
        return out

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> TunedLens:
        """A lens written by `save`."""
        import json

        path = Path(directory)
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise LmscopeError(
                f"{path} is not a tuned lens: it has no {CONFIG_FILE} (write one with "
                "`lmscope lens train` or TunedLens.save)."
            )
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise LmscopeError(
                f"{config_path} is not a version-{FORMAT_VERSION} {FORMAT} config "
                f"(format {config.get('format')!r}, version {config.get('version')!r})."
            )
        lens = cls(int(config["d_model"]), int(config["n_layers"]), config.get("info"))
        lens.load_state_dict(read_safetensors(path / WEIGHTS_FILE))
        return lens.to(device) if device is not None else lens


def tuned_lens(
    model: Any,
    lens: TunedLens,
    tokens: Prompt,
    *,
    target: TokenSpec | None = None,
    top_k: int = 5,
    layers: str | Sequence[int] = "all",
    norm: LensNorm = "recompute",
    tokenizer: Any | None = None,
) -> LensResult:
    """`logit_lens` with each stream passed through its translator first (same result)."""
    lens.check_model(model)
    lens = lens.to(model.device)
    return run_lens(
        model,
        tokens,
        method="tuned lens",
        translate=lens,
        target=target,
        top_k=top_k,
        layers=layers,
        norm=norm,
        tokenizer=tokenizer,
    )


# --- training and evaluation ------------------------------------------------------------
TokenBatches = Int[Tensor, "n_seq pos"] | Iterable[Int[Tensor, "batch pos"]]


def _streams(
    model: Any, batch: Int[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "row batch pos d_model"], Float[Tensor, "batch pos vocab"]]:
    """Every lens row's stream and the model's own log-probabilities, without gradients."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            batch.to(model.device), names_filter=resid_names(model, include_mid=False)
        )
        return cache.accumulated_resid(), logits.float().log_softmax(-1)


def _row_kl(
    model: Any, lens: TunedLens | None, layer: int, resid: Tensor, target_logp: Tensor
) -> Float[Tensor, ""]:
    """Mean over positions of ``KL(target || lens row layer)``, in nats."""
    if lens is not None:
        resid = lens(layer, resid)
    logp = readout_logits(model, resid).float().log_softmax(-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1).mean()


def _batches(
    token_batches: TokenBatches, batch_size: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """A tensor of sequences: random rows each step. A list: cycled. Else: consumed."""
    if isinstance(token_batches, Tensor):
        if token_batches.dim() != 2 or token_batches.is_floating_point():
            raise LmscopeError(
                f"token_batches must be token ids [n_seq, pos], got shape "
                f"{list(token_batches.shape)} ({token_batches.dtype})."
            )
        while True:
            rows = torch.randint(len(token_batches), (batch_size,), generator=generator)
            yield token_batches[rows]
    if isinstance(token_batches, Sequence):
        if not token_batches:
            raise LmscopeError("token_batches is empty: give at least one batch of token ids.")
        yield from itertools.cycle(token_batches)
    yield from token_batches


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter needing a gradient; restored afterwards."""
    was_training = model.training
    needs = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in needs:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in needs:
            p.requires_grad_(flag)
        model.train(was_training)


def train_tuned_lens(
    model: Any,
    token_batches: TokenBatches,
    *,
    steps: int = 250,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    optimizer: Literal["sgd", "adam"] = "sgd",
    batch_size: int = 8,
    seed: int = 0,
    lens: TunedLens | None = None,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens on `model`'s activations over `token_batches` (model frozen).

    `token_batches`: a ``[n_seq, pos]`` tensor (each step draws `batch_size` rows with a
    generator seeded by `seed`), a list of ``[batch, pos]`` tensors (cycled), or any
    iterable of them (consumed; it must last `steps` batches). Deterministic for a seed.
    `optimizer`: the paper's SGD with Nesterov momentum, or Adam (`lr` ~1e-3). Returns
    the lens (`lens` when given, trained further) with the losses in ``lens.info``.
    """
    check_readout_model(model, "the tuned lens")
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise LmscopeError(
            f"steps, lr and batch_size must be positive, got {steps}, {lr}, {batch_size}."
        )
    if optimizer not in ("sgd", "adam"):
        raise LmscopeError(f"optimizer={optimizer!r} is invalid: use 'sgd' or 'adam'.")
    lens = TunedLens.for_model(model) if lens is None else lens.to(model.device)
    lens.check_model(model)
    params = list(lens.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
        if optimizer == "sgd"
        else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    batches = _batches(token_batches, batch_size, torch.Generator().manual_seed(seed))
    rows = model.cfg.n_layers + 1
    losses: list[float] = []
    columns = (
        TextColumn("tuned lens"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("KL {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with _frozen(model), Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        for _ in range(steps):
            batch = next(batches, None)
            if batch is None:
                raise LmscopeError(
                    f"token_batches ran out after {len(losses)} of {steps} steps; give more "
                    "batches, a list (cycled) or a tensor of sequences (sampled)."
                )
            stack, final_logp = _streams(model, batch)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for layer in range(rows):
                loss = _row_kl(model, lens, layer, stack[layer], final_logp) / rows
                loss.backward()
                total += float(loss.detach())
            opt.step()
            schedule.step()
            losses.append(total)
            bar.update(task, advance=1, loss=total)
    lens.info.update(
        steps=int(lens.info.get("steps", 0)) + steps,
        lr=lr,
        optimizer=optimizer,
        batch_size=batch_size,
        seed=seed,
        losses=[*lens.info.get("losses", []), *losses],
    )
    return lens


def lens_divergence(
    model: Any, token_batches: TokenBatches, lens: TunedLens | None = None
) -> Float[Tensor, " row"]:
    """Mean ``KL(p_final || p_lens)`` per row (0 = embeddings .. n_layers), in nats, over
    every position of `token_batches` (a tensor is one batch; an iterable is averaged
    batch by batch). ``lens=None`` measures the logit lens."""
    check_readout_model(model, "lens_divergence")
    if lens is not None:
        lens.check_model(model)
    batches = [token_batches] if isinstance(token_batches, Tensor) else list(token_batches)
    if not batches:
        raise LmscopeError("token_batches is empty: give at least one batch of token ids.")
    rows = model.cfg.n_layers + 1
    totals = torch.zeros(rows)
    with _frozen(model), torch.no_grad():
        for batch in batches:
            stack, final_logp = _streams(model, batch)
            for layer in range(rows):
                totals[layer] += float(_row_kl(model, lens, layer, stack[layer], final_logp))
    return totals / len(batches)
