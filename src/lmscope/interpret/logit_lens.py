"""The logit lens: what the model would predict if it stopped after each layer.

nostalgebraist (2020): read every intermediate residual stream out through the model's
own final norm and unembedding, ``logits_l = unembed(ln_final(resid_l))``, and look at
the top tokens, or at the probability and rank of one target token, layer by layer.

Rows follow TransformerLens's `accumulated_resid` (`ActivationCache.accumulated_resid`):
row ``"l_pre"`` is ``blocks.l.hook_resid_pre``, the stream *entering* block l, i.e.
after l blocks (``"0_pre"`` is the embeddings), and ``"final_post"`` is the last
block's ``hook_resid_post``, whose read-out is exactly the model's logits. With
``include_mid=True`` the ``"l_mid"`` rows (after block l's attention, before its MLP)
are interleaved.

Which norm (``norm=``):
- ``"recompute"`` (default, the standard logit lens): the final norm recomputes its mean
  and scale from each intermediate stream, as if that stream were the last one. Early
  streams are much smaller than the final one, so this is the read-out that yields a
  sensible distribution at every layer.
- ``"frozen"``: every stream is divided by the scale the final norm computed on the
  *real* final stream (``cache.apply_ln_to_stack``), then weighted. This is the linear
  read-out that direct logit attribution uses; early layers give flat distributions.

The tuned lens (`lmscope.interpret.tuned_lens`) inserts a learned affine map before the
read-out and returns the same `LensResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.interpret.readout import check_readout_model, final_norm_affine, readout_logits
from lmscope.interpret.tokens import (
    Prompt,
    TokenSpec,
    prompt_ids,
    single_token_id,
    token_label,
    token_labels,
)

LensNorm = Literal["recompute", "frozen"]
#: A learned map applied to stream `layer` (0..n_layers) before the read-out (tuned lens).
Translate = Callable[[int, Tensor], Tensor]


@dataclass
class LensResult:
    """A lens over one prompt: per row (layer) and position, the top tokens and the target.

    Rows are labelled as in `accumulated_resid` (``"0_pre"`` = embeddings, ``"l_pre"`` =
    after l blocks, ``"final_post"`` = the model's output); `layers` gives each row's
    number of blocks applied. Ranks are 1-based (rank 1 = the top token).
    """

    method: str  # "logit lens" or "tuned lens"
    norm: str  # "recompute" or "frozen"
    labels: list[str]
    layers: list[int]
    input_ids: list[int]
    input_tokens: list[str]
    top_ids: Int[Tensor, "row pos k"]
    top_probs: Float[Tensor, "row pos k"]
    top_tokens: list[list[list[str]]]  # [row][pos][k]
    kl_to_final: Float[Tensor, "row pos"]  # KL(model's distribution || lens), nats
    target_id: int | None = None
    target_token: str | None = None
    target_probs: Float[Tensor, "row pos"] | None = None
    target_ranks: Int[Tensor, "row pos"] | None = None

    def _position(self, position: int) -> int:
        n = len(self.input_ids)
        if not -n <= position < n:
            raise LmscopeError(f"position {position} does not exist: the prompt has 0..{n - 1}.")
        return position % n

    def first_top1(self, position: int = -1) -> str | None:
        """Label of the first row where the target is the top token at `position`."""
        if self.target_ranks is None:
            raise LmscopeError("this lens was run without a target token.")
        ranks = self.target_ranks[:, self._position(position)]
        hits = (ranks == 1).nonzero()
        return self.labels[int(hits[0])] if hits.numel() else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every row, every position, top tokens and the target."""
        target = None
        if self.target_id is not None:
            target = {"id": self.target_id, "token": self.target_token}
        rows = []
        for r, label in enumerate(self.labels):
            positions = []
            for p in range(len(self.input_ids)):
                cell: dict[str, Any] = {
                    "top": [
                        {"id": int(i), "token": t, "prob": float(q)}
                        for i, t, q in zip(
                            self.top_ids[r, p],
                            self.top_tokens[r][p],
                            self.top_probs[r, p],
                            strict=True,
                        )
                    ],
                    "kl_to_final": float(self.kl_to_final[r, p]),
                }
                if self.target_probs is not None and self.target_ranks is not None:
                    cell["target_prob"] = float(self.target_probs[r, p])
                    cell["target_rank"] = int(self.target_ranks[r, p])
                positions.append(cell)
            rows.append({"label": label, "layer": self.layers[r], "positions": positions})
        return {
            "method": self.method,
            "norm": self.norm,
            "input_ids": self.input_ids,
            "input_tokens": self.input_tokens,
            "target": target,
            "rows": rows,
        }

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Heatmap of rows x positions (target probability, else top-1 probability) with
        the top token written in each cell; see `lmscope.interpret.lens_plot.plot_lens`."""
        from lmscope.interpret.lens_plot import plot_lens

        return plot_lens(self, path, title=title)


def logit_lens(
    model: Any,
    tokens: Prompt,
    *,
    target: TokenSpec | None = None,
    top_k: int = 5,
    layers: str | Sequence[int] = "all",
    include_mid: bool = False,
    norm: LensNorm = "recompute",
    tokenizer: Any | None = None,
) -> LensResult:
    """Logit lens over one prompt (text with `tokenizer`, ids, or a ``[1, pos]`` tensor).

    `target` (an id, or text that is one token) adds its probability and rank at every
    row and position. `layers` picks rows by blocks applied (0 = embeddings, n_layers =
    the output; negative counts back); `include_mid` adds the post-attention streams.
    """
    return run_lens(
        model,
        tokens,
        method="logit lens",
        target=target,
        top_k=top_k,
        layers=layers,
        include_mid=include_mid,
        norm=norm,
        tokenizer=tokenizer,
    )


def _selected_layers(n_layers: int, layers: str | Sequence[int]) -> set[int]:
    if isinstance(layers, str):
        if layers != "all":
            raise LmscopeError(
                f"layers={layers!r} is invalid: use 'all' or a list of layer numbers."
            )
        return set(range(n_layers + 1))
    chosen = set()
    for layer in layers:
        if not -(n_layers + 1) <= int(layer) <= n_layers:
            raise LmscopeError(
                f"layer {layer} is not a lens row: use 0 (embeddings) .. {n_layers} (the "
                "output), or negative numbers from the end."
            )
        chosen.add(int(layer) % (n_layers + 1))
    if not chosen:
        raise LmscopeError("layers is empty: give at least one layer number, or 'all'.")
    return chosen


def row_layer(label: str, n_layers: int) -> int:
    """Blocks applied before the stream an `accumulated_resid` label names."""
    return n_layers if label == "final_post" else int(label.split("_")[0])


def resid_names(model: Any, include_mid: bool) -> list[str]:
    """Hook names `accumulated_resid` reads (with the final norm's scale when it has one)."""
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    if include_mid:
        mids = [f"blocks.{i}.hook_resid_mid" for i in range(n)]
        missing = set(mids) - set(model.hook_names())
        if missing:
            raise LmscopeError(
                "include_mid needs a stream between attention and MLP (hook_resid_mid); "
                "this model's blocks have none (attention-only or parallel blocks)."
            )
        names += mids
    if "ln_final.hook_scale" in model.hook_names():
        names.append("ln_final.hook_scale")
    return names


def run_lens(
    model: Any,
    tokens: Prompt,
    *,
    method: str,
    translate: Translate | None = None,
    target: TokenSpec | None = None,
    top_k: int = 5,
    layers: str | Sequence[int] = "all",
    include_mid: bool = False,
    norm: LensNorm = "recompute",
    tokenizer: Any | None = None,
) -> LensResult:
    """The lens machinery shared by `logit_lens` and `tuned_lens`: read every selected
    stream out (after `translate`, when given) and summarise each row's distribution."""
    check_readout_model(model, f"the {method}")
    if norm not in ("recompute", "frozen"):
        raise LmscopeError(f"norm={norm!r} is invalid: use 'recompute' or 'frozen'.")
    vocab = model.cfg.vocab_size
    if not 1 <= top_k <= vocab:
        raise LmscopeError(f"top_k={top_k} is invalid: use 1..{vocab}.")
    ids = prompt_ids(model, tokens, tokenizer)
    target_id = None if target is None else single_token_id(target, tokenizer, vocab)
    n = model.cfg.n_layers
    chosen = _selected_layers(n, layers)
    weight, bias = final_norm_affine(model)

    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=resid_names(model, include_mid))
        stack, labels = cache.accumulated_resid(incl_mid=include_mid, return_labels=True)
        final_logp = logits[0].float().log_softmax(-1)  # [pos, vocab]
        rows = [r for r, label in enumerate(labels) if row_layer(label, n) in chosen]
        tops, top_ps, kls, t_probs, t_ranks = [], [], [], [], []
        for r in rows:
            resid = stack[r]  # [1, pos, d_model]
            if translate is not None:
                resid = translate(row_layer(labels[r], n), resid)
            if norm == "frozen":
                normed = cache.apply_ln_to_stack(resid.unsqueeze(0))[0]
                normed = normed if weight is None else normed * weight
                normed = normed if bias is None else normed + bias
                row_logits = model.unembed(normed, model.embed.weight)
            else:
                row_logits = readout_logits(model, resid)
            logp = row_logits[0].float().log_softmax(-1)  # [pos, vocab]
            top = logp.topk(top_k, dim=-1)
            tops.append(top.indices)
            top_ps.append(top.values.exp())
            # KL >= 0; float rounding can give -1e-8 where the distributions agree.
            kls.append((final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0.0))
            if target_id is not None:
                t_probs.append(logp[:, target_id].exp())
                t_ranks.append(1 + (logp > logp[:, target_id : target_id + 1]).sum(-1))

    top_ids = torch.stack(tops).cpu()
    decoded = _decoder(tokenizer)
    return LensResult(
        method=method,
        norm=norm,
        labels=[labels[r] for r in rows],
        layers=[row_layer(labels[r], n) for r in rows],
        input_ids=ids[0].tolist(),
        input_tokens=token_labels(tokenizer, ids[0].tolist()),
        top_ids=top_ids,
        top_probs=torch.stack(top_ps).cpu(),
        top_tokens=[[[decoded(int(i)) for i in cell] for cell in row] for row in top_ids],
        kl_to_final=torch.stack(kls).cpu(),
        target_id=target_id,
        target_token=None if target_id is None else decoded(target_id),
        target_probs=torch.stack(t_probs).cpu() if t_probs else None,
        target_ranks=torch.stack(t_ranks).cpu() if t_ranks else None,
    )


def _decoder(tokenizer: Any | None) -> Callable[[int], str]:
    """Token id -> label, decoding each distinct id once (rows repeat the same tokens)."""
    memo: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in memo:
            memo[token_id] = token_label(tokenizer, token_id)
        return memo[token_id]

    return decode
