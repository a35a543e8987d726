"""Follow one token through a model: every number `lmscope explain --text` shows.

`trace_token` runs ONE forward with recording hooks on the model's own hook points, so
each number is exactly what that forward computed (the final logits come from the same
forward). Recording the norm scales and the attention pattern makes the model take its
unfused paths (explicit attention, unfused LayerNorm): the numbers agree with an
unhooked forward to float rounding, not bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.model.base import BaseTransformer
from lmscope.model.transformer import Transformer

#: Hook points a trace records (names relative to the model).
_RECORDED = re.compile(
    r"hook_embed|hook_pos_embed|ln_final\.hook_scale|blocks\.\d+\.("
    r"hook_resid_pre|ln1\.hook_scale|hook_attn_out|hook_resid_mid|hook_mlp_out|"
    r"hook_resid_post|attn\.hook_(q|k|v|rot_q|rot_k|attn_scores|pattern|z)|"
    r"mlp\.(experts\.\d+\.)?hook_(pre|pre_linear|post)|mlp\.hook_expert_(weights|indices))"
)


@dataclass
class HeadTrace:
    """One attention head at the traced position (query) against every key."""

    head: int
    #: The key/value head this query head reads (differs from `head` with GQA/MQA).
    kv_head: int
    q: list[float]
    k: list[float]
    v: list[float]
    #: q and k after RoPE (what the dot product sees), for RoPE models.
    q_rot: list[float] | None
    k_rot: list[float] | None
    #: Scaled (and biased) scores over all keys; None where the mask hides a key.
    scores: list[float | None]
    pattern: list[float]
    z: list[float]


@dataclass
class Neuron:
    """One MLP neuron at the traced position."""

    index: int
    #: Pre-activation (of the gate, for gated MLPs).
    pre: float
    post: float
    #: Linear branch of a gated MLP (post = act(pre) * linear).
    linear: float | None = None
    #: Expert the neuron belongs to, for mixtures of experts.
    expert: int | None = None


@dataclass
class MLPTrace:
    """The MLP (or mixture of experts) of one layer at the traced position."""

    top_neurons: list[Neuron]
    out: list[float]
    #: Chosen experts and their routing weights (mixtures of experts only).
    experts: list[int] | None = None
    expert_weights: list[float] | None = None


@dataclass
class LayerTrace:
    """One block at the traced position."""

    layer: int
    resid_pre: list[float]
    #: sqrt(var + eps) of ln1: before attention (pre-norm) or after it (post-norm).
    ln1_scale: float | None
    attention: HeadTrace
    attn_out: list[float]
    #: Stream after attention (None for attention-only and parallel blocks).
    resid_mid: list[float] | None
    mlp: MLPTrace | None
    resid_post: list[float]


@dataclass
class Prediction:
    """One of the top next-token (or masked-token) predictions."""

    token: int
    label: str
    logit: float
    prob: float


@dataclass
class TokenTrace:
    """Everything the model computes for one token, layer by layer."""

    model: str
    architecture: str
    norm_placement: str
    tokens: list[int]
    labels: list[str]
    position: int
    embed: list[float]
    pos_embed: list[float] | None
    layers: list[LayerTrace]
    final_norm_scale: float | None
    #: The final hidden state: after the final norm, what the head (if any) reads.
    final: list[float]
    #: Top-k predictions; None for an encoder without a masked-LM head.
    predictions: list[Prediction] | None


def _vec(t: Tensor) -> list[float]:
    return t.detach().double().cpu().tolist()


def _check_inputs(
    model: BaseTransformer, tokens: Tensor, position: int, head: int, top_k: int
) -> int:
    """Validate the arguments of `trace_token`; returns the position as an index >= 0."""
    if not isinstance(model, Transformer):
        raise LmscopeError(
            f"explain traces decoder-only and encoder-only models, not {model.cfg.architecture}."
        )
    n, vocab = tokens.shape[-1], model.cfg.vocab_size
    if tokens.ndim != 1 or n == 0:
        raise LmscopeError("explain traces one non-empty sequence of token ids.")
    bad = [int(t) for t in tokens if not 0 <= int(t) < vocab]
    if bad:
        raise LmscopeError(f"token id {bad[0]} is outside this model's vocabulary [0, {vocab}).")
    if not -n <= position < n:
        raise LmscopeError(
            f"position {position} is outside the {n} tokens; use 0..{n - 1} or -{n}..-1."
        )
    if not 0 <= head < model.cfg.n_heads:
        raise LmscopeError(
            f"head {head} does not exist; this model has heads 0..{model.cfg.n_heads - 1}."
        )
    if top_k < 1:
        raise LmscopeError(f"top_k must be >= 1, got {top_k}.")
    return position % n


def _mlp_trace(seen: dict[str, Tensor], p: str, pos: int, top_k: int) -> MLPTrace:
    """Top neurons of layer prefix `p` (``blocks.3.mlp.``) at `pos`, dense or MoE."""
    rows: list[tuple[int | None, Tensor, Tensor, Tensor | None]] = []  # expert, pre, post, lin
    experts = weights = None
    if p + "hook_expert_indices" in seen:
        chosen = seen[p + "hook_expert_indices"][0]  # [pos, k]
        experts = [int(e) for e in chosen[pos]]
        weights = _vec(seen[p + "hook_expert_weights"][0, pos])
        for e in experts:
            # An expert sees only its routed tokens, in sequence order (batch of one):
            # our token's row is the number of earlier tokens routed to it.
            row = int((chosen[:pos] == e).any(-1).sum())
            q = f"{p}experts.{e}."
            lin = seen.get(q + "hook_pre_linear")
            rows.append(
                (
                    e,
                    seen[q + "hook_pre"][row],
                    seen[q + "hook_post"][row],
                    None if lin is None else lin[row],
                )
            )
    else:
        lin = seen.get(p + "hook_pre_linear")
        rows.append(
            (
                None,
                seen[p + "hook_pre"][0, pos],
                seen[p + "hook_post"][0, pos],
                None if lin is None else lin[0, pos],
            )
        )
    neurons = [
        Neuron(i, float(pre[i]), float(post[i]), None if lin is None else float(lin[i]), e)
        for e, pre, post, lin in rows
        for i in range(post.shape[-1])
    ]
    neurons.sort(key=lambda nrn: -abs(nrn.post))
    out = seen[p[: -len("mlp.")] + "hook_mlp_out"][0, pos]
    return MLPTrace(neurons[:top_k], _vec(out), experts, weights)


def trace_token(
    model: BaseTransformer,
    tokens: Sequence[int] | Tensor,
    position: int = -1,
    head: int = 0,
    top_k: int = 5,
    labels: Sequence[str] | None = None,
) -> TokenTrace:
    """Trace token `position` of `tokens` through `model`, showing attention head `head`.

    `labels` name the tokens in the output (default: their ids). Raises `LmscopeError`
    for encoder-decoder models and for out-of-range ids, positions or heads.
    """
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten().cpu()
    pos = _check_inputs(model, ids, position, head, top_k)
    assert isinstance(model, Transformer)
    cfg = model.cfg
    names = [str(t) for t in ids.tolist()] if labels is None else list(labels)
    if len(names) != len(ids):
        raise LmscopeError(f"{len(names)} labels for {len(ids)} tokens.")

    seen: dict[str, Tensor] = {}

    def record(x: Tensor, hook: HookPoint) -> None:
        seen[hook.name] = x.detach().clone()

    final: list[Tensor] = []
    # The final norm may be an Identity (post-norm, norm='none') with no hook point; a
    # PyTorch forward hook on it reads what the head receives in every case.
    handle = model.ln_final.register_forward_hook(lambda m, i, o: final.append(o.detach()))
    was_training = model.training
    model.eval()  # dropout off: the trace must be the model's deterministic computation
    try:
        with torch.no_grad(), model.hooks([(_RECORDED.fullmatch, record)]):
            out = model(ids[None].to(model.device))
    finally:
        handle.remove()
        model.train(was_training)

    group = cfg.n_heads // cfg.kv_heads
    kv_head = head // group
    layers = []
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        a = b + "attn.hook_"
        scores = seen[a + "attn_scores"][0, head, pos]
        rot = a + "rot_q" in seen
        layers.append(
            LayerTrace(
                layer=i,
                resid_pre=_vec(seen[b + "hook_resid_pre"][0, pos]),
                ln1_scale=float(seen[b + "ln1.hook_scale"][0, pos, 0])
                if b + "ln1.hook_scale" in seen
                else None,
                attention=HeadTrace(
                    head=head,
                    kv_head=kv_head,
                    q=_vec(seen[a + "q"][0, pos, head]),
                    k=_vec(seen[a + "k"][0, pos, kv_head]),
                    v=_vec(seen[a + "v"][0, pos, kv_head]),
                    q_rot=_vec(seen[a + "rot_q"][0, pos, head]) if rot else None,
                    k_rot=_vec(seen[a + "rot_k"][0, pos, kv_head]) if rot else None,
                    # JSON has no -inf: a masked key is None.
                    scores=[float(s) if torch.isfinite(s) else None for s in scores],
                    pattern=_vec(seen[a + "pattern"][0, head, pos]),
                    z=_vec(seen[a + "z"][0, pos, head]),
                ),
                attn_out=_vec(seen[b + "hook_attn_out"][0, pos]),
                resid_mid=_vec(seen[b + "hook_resid_mid"][0, pos])
                if b + "hook_resid_mid" in seen
                else None,
                mlp=_mlp_trace(seen, b + "mlp.", pos, top_k)
                if b + "hook_mlp_out" in seen
                else None,
                resid_post=_vec(seen[b + "hook_resid_post"][0, pos]),
            )
        )

    predictions = None
    if model.unembed is not None or model.mlm_head is not None:
        logits = out[0, pos].float()
        probs = logits.softmax(-1)
        top = probs.topk(min(top_k, logits.shape[-1]))
        predictions = [
            Prediction(int(t), _label(int(t), ids, names), float(logits[t]), float(p))
            for p, t in zip(top.values, top.indices, strict=True)
        ]
    return TokenTrace(
        model=cfg.name or "model",
        architecture=cfg.architecture,
        norm_placement=cfg.norm_placement,
        tokens=[int(t) for t in ids],
        labels=names,
        position=pos,
        embed=_vec(seen["hook_embed"][0, pos]),
        pos_embed=_vec(seen["hook_pos_embed"][0, pos]) if "hook_pos_embed" in seen else None,
        layers=layers,
        final_norm_scale=float(seen["ln_final.hook_scale"][0, pos, 0])
        if "ln_final.hook_scale" in seen
        else None,
        final=_vec(final[0][0, pos]),
        predictions=predictions,
    )


def _label(token: int, ids: Tensor, names: list[str]) -> str:
    """A predicted token's label: as named in the input if it occurs there, else its id."""
    hits = (ids == token).nonzero()
    return names[int(hits[0])] if len(hits) else str(token)
