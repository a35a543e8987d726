"""Circuit views from "A Mathematical Framework for Transformer Circuits" (Elhage et al., 2021).

An attention head does two separable things, each a low-rank ``d_model x d_model``
matrix acting on the residual stream (row vectors, TransformerLens' convention):

- the QK circuit ``W_Q W_K^T`` decides where it attends: the score of query ``x_q``
  on key ``x_k`` is ``x_q W_QK x_k^T`` (times the attention scale, left out here);
- the OV circuit ``W_V W_O`` decides what it writes: ``x_k W_OV`` per attended key.

Through the embeddings they become token-to-token maps: the full OV circuit
``W_E W_OV W_U`` (which logits a head raises when attending to a token) and the full QK
circuit ``W_E W_QK W_E^T`` (which tokens attend to which). All are `FactoredMatrix`es:
nothing ``vocab x vocab`` is formed unless asked for (``.AB``).

What is left out, as in the paper: biases, the attention scale, and norms. Run
`lmscope.model.process_weights` first to fold the norms' weights into the circuits (the
per-token normalisation itself stays out). With RoPE the true QK depends on the
distance between query and key; these factored QK circuits are its content-only part
(the score at distance 0). ALiBi, T5 and Shaw position terms are likewise not included.
With grouped-query attention, query head ``h`` reads key/value head
``h // (n_heads / n_kv_heads)`` (`kv_head`).

Derived scores: `ov_copying_score` (eigenvalues of the full OV circuit: ``+1`` for a
head that copies the attended token to the output, ``-1`` for one that suppresses it)
and `composition_scores` (how much a later head reads what an earlier head writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.interpret.factored import FactoredMatrix
from lmscope.interpret.indices import blocks_of, check_head, check_layer


def kv_head(model: Any, head: int) -> int:
    """The key/value head that query `head` reads (itself without GQA)."""
    head = check_head(model, head)
    return head // (model.cfg.n_heads // model.cfg.kv_heads)


def qk_circuit(model: Any, layer: int, head: int | None = None) -> FactoredMatrix:
    """``W_Q[h] W_K[kv(h)]^T``: ``[d_model, d_model]``, or ``[head, d_model, d_model]``.

    The content-only part of the attention score (no scale, no biases, no positions).
    """
    w_q, w_k, _, _ = _head_weights(model, layer, head)
    return FactoredMatrix(w_q, w_k.mT)


def ov_circuit(model: Any, layer: int, head: int | None = None) -> FactoredMatrix:
    """``W_V[kv(h)] W_O[h]``: ``[d_model, d_model]``, or ``[head, d_model, d_model]``."""
    _, _, w_v, w_o = _head_weights(model, layer, head)
    return FactoredMatrix(w_v, w_o)


def full_qk_circuit(model: Any, layer: int, head: int | None = None) -> FactoredMatrix:
    """``W_E W_QK W_E^T``: ``[vocab, vocab]`` (query token x key token), per head if no `head`."""
    w_e = _embedding(model)
    w_q, w_k, _, _ = _head_weights(model, layer, head)
    return FactoredMatrix(w_e @ w_q, w_k.mT @ w_e.T)


def full_ov_circuit(model: Any, layer: int, head: int | None = None) -> FactoredMatrix:
    """``W_E W_OV W_U``: ``[vocab, vocab]`` (attended token x logit), per head if no `head`."""
    _, _, w_v, w_o = _head_weights(model, layer, head)
    return FactoredMatrix(_embedding(model) @ w_v, w_o @ _unembedding(model))


def ov_copying_score(model: Any) -> Float[Tensor, "layers heads"]:
    """``sum(lambda) / sum(|lambda|)`` over the eigenvalues of each head's full OV circuit.

    The paper's copying score: ``1`` when every eigenvalue is positive (attending to a
    token raises that token's logit), ``-1`` when every one is negative, near 0 for no
    consistent effect; NaN for a head whose OV circuit is zero. Eigenvalues come from
    the ``d_head x d_head`` product ``W_O (W_U W_E) W_V``, which shares the non-zero
    spectrum of ``W_E W_V W_O W_U`` (``vocab x vocab``, never formed).
    """
    vocab_map = _work(_unembedding(model)) @ _work(_embedding(model))  # [d_model, d_model]
    rows = []
    for layer in range(len(blocks_of(model))):
        _, _, w_v, w_o = _head_weights(model, layer, None)
        small = _work(w_o) @ vocab_map @ _work(w_v)  # [head, d_head, d_head]
        eig = torch.linalg.eigvals(small)
        # Complex eigenvalues of a real matrix come in conjugate pairs: the sum is real.
        rows.append(eig.sum(-1).real / eig.abs().sum(-1))
    return torch.stack(rows)


def composition_scores(model: Any, kind: str) -> Float[Tensor, "layer_a head_a layer_b head_b"]:
    """How much each later head B reads what each earlier head A writes.

    ``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` with ``W_A = W_OV^A`` and, by `kind`
    (``"q"``, ``"k"`` or ``"v"``, any case):
    ``"q"`` ``W_B = W_QK^B`` (A's output feeds B's queries), ``"k"`` ``W_B = (W_QK^B)^T``
    (B's keys), ``"v"`` ``W_B = W_OV^B`` (B's values). Entry ``[la, ha, lb, hb]``; NaN
    where ``lb <= la`` (a head cannot read a head of its own or a later layer). Random
    low-rank circuits score about ``1 / sqrt(d_model)``: the baseline to compare with.
    Computed from ``d_head x d_head`` matrices: no ``d_model x d_model`` product is formed.
    """
    mode = _kind(kind)
    weights = [_head_weights(model, layer, None) for layer in range(len(blocks_of(model)))]
    w_v = torch.stack([_work(w[2]) for w in weights])  # [layer, head, d_model, d_head]
    w_o = torch.stack([_work(w[3]) for w in weights])  # [layer, head, d_head, d_model]
    w_q = torch.stack([_work(w[0]) for w in weights])
    w_k = torch.stack([_work(w[1]) for w in weights])
    # Right-hand matrix W_B = A2 @ B2 of every head, as factors.
    a2, b2 = {"q": (w_q, w_k.mT), "k": (w_k, w_q.mT), "v": (w_v, w_o)}[mode]
    # ||A1 (B1 A2) B2||_F = ||R1 (B1 A2) R2^T||_F with A1 = Q1 R1, B2^T = Q2 R2.
    r1 = torch.linalg.qr(w_v, mode="r")[1]
    r2 = torch.linalg.qr(b2.mT, mode="r")[1]
    norm_a = FactoredMatrix(w_v, w_o).norm()  # [layer, head]
    norm_b = FactoredMatrix(a2, b2).norm()
    n_layers, n_heads = norm_a.shape
    scores = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"), device=w_v.device)
    for la in range(n_layers - 1):
        middle = torch.einsum("hkd,lgdj->hlgkj", w_o[la], a2[la + 1 :])  # B1 A2
        core = r1[la][:, None, None] @ middle @ r2[la + 1 :].mT[None]
        norms = torch.linalg.matrix_norm(core)  # [head_a, later layer, head_b]
        scores[la, :, la + 1 :] = norms / (norm_a[la][:, None, None] * norm_b[la + 1 :][None])
    return scores


# --- plots ----------------------------------------------------------------------------


def plot_head_scores(
    scores: Float[Tensor, "layers heads"], path: str | Path, title: str = ""
) -> Path:
    """Heatmap of one score per head (layers x heads), written to `path` (PNG).

    Scores with negative values (copying scores in [-1, 1]) get a diverging map centred
    on 0; small grids print the numbers.
    """
    plt = _pyplot()
    values = scores.detach().float().cpu()
    n_layers, n_heads = values.shape
    finite = values[values.isfinite()]
    signed = bool(finite.numel()) and float(finite.min()) < 0
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.4 * n_heads, 12), min(1.5 + 0.35 * n_layers, 12)))
    if signed:
        limit = float(finite.abs().max())
        image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    else:
        image = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, n_heads, max(1, n_heads // 12)))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    if n_layers * n_heads <= 64:
        for layer in range(n_layers):
            for head in range(n_heads):
                text = f"{float(values[layer, head]):.2f}"
                ax.text(head, layer, text, ha="center", va="center", fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.85, label="score")
    return _save(plt, fig, path)


def plot_composition_scores(
    scores: Float[Tensor, "layer_a head_a layer_b head_b"], path: str | Path, title: str = ""
) -> Path:
    """Heatmap of `composition_scores`: rows are earlier heads A, columns later heads B.

    Heads are ordered layer by layer; lines separate layers; pairs that cannot compose
    (NaN) are left blank.
    """
    plt = _pyplot()
    n_layers, n_heads = scores.shape[:2]
    n = n_layers * n_heads
    grid = scores.detach().float().cpu().reshape(n, n).numpy()
    fig, ax = plt.subplots(figsize=(min(3 + 0.12 * n, 14), min(2.5 + 0.12 * n, 13)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # NaN: cannot compose
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, aspect="auto", interpolation="nearest")
    if n <= 48:  # room for every head's label
        ticks, labels = list(range(n)), [f"L{i // n_heads}H{i % n_heads}" for i in range(n)]
    else:
        ticks = [layer * n_heads for layer in range(n_layers)]
        labels = [f"L{layer}" for layer in range(n_layers)]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    for edge in range(n_heads, n, n_heads):
        ax.axhline(edge - 0.5, color="grey", linewidth=0.3)
        ax.axvline(edge - 0.5, color="grey", linewidth=0.3)
    ax.set_xlabel("later head B (reads)")
    ax.set_ylabel("earlier head A (writes)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.85, label="composition score")
    return _save(plt, fig, path)


# --- helpers --------------------------------------------------------------------------


def _head_weights(
    model: Any, layer: int, head: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``W_Q, W_K, W_V, W_O`` of one head (or every head, stacked), keys/values per query head.

    Shapes: ``[(head,) d_model, d_head]`` for Q/K/V and ``[(head,) d_head, d_model]`` for O.
    """
    attn = blocks_of(model)[check_layer(model, layer)].attn
    group = attn.n_heads // attn.n_kv_heads
    w_q, w_k, w_v, w_o = (w.detach() for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
    if head is not None:
        h = check_head(model, head)
        return w_q[h], w_k[h // group], w_v[h // group], w_o[h]
    if group > 1:  # each key/value head serves `group` consecutive query heads
        w_k, w_v = w_k.repeat_interleave(group, 0), w_v.repeat_interleave(group, 0)
    return w_q, w_k, w_v, w_o


def _embedding(model: Any) -> Float[Tensor, "vocab d_model"]:
    """What a token writes to the residual stream (``W_E`` times any embedding scale)."""
    w_e = model.embed.weight.detach()
    return w_e * model.cfg.embed_scale if model.cfg.embed_scale != 1.0 else w_e


def _unembedding(model: Any) -> Float[Tensor, "d_model vocab"]:
    """``W_U`` (times any unembedding scale)."""
    w_u = model.W_U.detach()
    return w_u * model.cfg.unembed_scale if model.cfg.unembed_scale != 1.0 else w_u


def _work(t: Tensor) -> Tensor:
    """At least float32: QR and eigenvalues have no half-precision CPU kernels."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _kind(kind: str) -> str:
    mode = str(kind).lower()
    if mode not in ("q", "k", "v"):
        raise LmscopeError(
            f"composition kind {kind!r} is not one of 'q' (query), 'k' (key), 'v' (value)."
        )
    return mode


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    from lmscope.serialization import atomic_write

    fig.tight_layout()
    target = Path(path)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return target
