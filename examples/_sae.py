"""Helpers of the SAE study (examples/sae_features.py): labels, exact detection scores, pictures.

- Labels: which characters of a text are inside a speaker-name line ("COUNTESS." in the
  complete plays, "First Citizen:" in tiny Shakespeare), which start a dialogue line,
  and which belong to an archaic pronoun (thou, thee, thy, thine, thyself).
- `detection_scores`: how well each SAE latent's activation detects a label, exactly:
  ROC AUC (ties counted half, as Mann-Whitney's U), and the precision, recall and F1 of
  "the latent fires" (activation > 0).
- Pictures: the sparsity / reconstruction trade-off of the SAEs, feature cards (top
  contexts shaded by activation, activation histograms on and off the label), and the
  clamping measurements.

The SAE maths (encoding, evaluation, top contexts, clamping) is `lmscope.sae`'s; this
module only labels text, counts and draws.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from _common import figure, save_figure
from lmscope.sae import metrics

#: A speaker-name line: all capitals ending with '.' or ':' ("KING OF FRANCE.", the
#: complete plays), or a capitalised name ending with ':' ("First Citizen:", tiny
#: Shakespeare). Act and scene headings are not speakers.
SPEAKER = re.compile(r"^(?!ACT\b|SCENE\b)(?:[A-Z][A-Z'&,\- ]*[A-Z][.:]|[A-Z][A-Za-z'\- ]{0,30}:)$")
#: Archaic second-person pronouns (whole words, any case).
PRONOUN = re.compile(r"\b(?:thou|thee|thy|thine|thyself)\b", re.IGNORECASE)
#: Archaic words for a word-level model: the pronouns and the old verb forms hath / doth.
ARCHAIC = re.compile(r"\b(?:thou|thee|thy|thine|thyself|hath|doth)\b", re.IGNORECASE)


def _lines(text: str) -> list[tuple[int, str]]:
    """(start offset, line) for every line of `text` (without its newline)."""
    out, start = [], 0
    for line in text.split("\n"):
        out.append((start, line))
        start += len(line) + 1
    return out


def speaker_mask(text: str) -> list[bool]:
    """Per character: inside a speaker-name line (its name and final '.' or ':')."""
    mask = [False] * len(text)
    for start, line in _lines(text):
        if SPEAKER.match(line.strip()):
            mask[start : start + len(line)] = [True] * len(line)
    return mask


def line_start_mask(text: str) -> list[bool]:
    """Per character: the first character of a dialogue line (not a speaker-name line,
    a stage direction in brackets, or an act / scene heading)."""
    mask = [False] * len(text)
    for i, (start, line) in enumerate(_lines(text)):
        stripped = line.strip()
        if i == 0 or not stripped or SPEAKER.match(stripped):
            continue  # the first line of a window may be cut: its start is unknown
        if stripped.startswith(("[", "ACT ", "SCENE ")):
            continue
        mask[start] = True
    return mask


def pronoun_mask(text: str) -> list[bool]:
    """Per character: an archaic pronoun's letters after its "th" (the first two letters
    are those of "the", "that", ... as well, so a reader cannot know yet)."""
    mask = [False] * len(text)
    for match in PRONOUN.finditer(text):
        mask[match.start() + 2 : match.end()] = [True] * (match.end() - match.start() - 2)
    return mask


def archaic_mask(text: str) -> list[bool]:
    """Per character: the letters of an archaic word (`ARCHAIC`), all of them (a word-level
    model reads " thou" as one token, so nothing is ambiguous yet at its first letter)."""
    mask = [False] * len(text)
    for match in ARCHAIC.finditer(text):
        mask[match.start() : match.end()] = [True] * (match.end() - match.start())
    return mask


Labeller = Callable[[str], list[bool]]
#: The labels of the character-level study: name -> (description, per-character labeller).
LABELS: dict[str, tuple[str, Labeller]] = {
    "speaker": ("inside a speaker-name line (e.g. `COUNTESS.`)", speaker_mask),
    "line start": ("first character of a dialogue line", line_start_mask),
    "thou/thee/thy": ("an archaic pronoun (thou, thee, thy, thine, thyself)", pronoun_mask),
}
#: The labels of a study of a word-piece model (SmolLM2): the same ideas per token.
WORD_LABELS: dict[str, tuple[str, Labeller]] = {
    "speaker": ("a token of a speaker-name line (e.g. `COUNTESS.`)", speaker_mask),
    "line start": ("the first token of a dialogue (verse or prose) line", line_start_mask),
    "archaic": ("an archaic word (thou, thee, thy, thine, thyself, hath, doth)", archaic_mask),
}


def token_labels(
    rows: Int[Tensor, "n ctx"],
    decode: Callable[[list[int]], str],
    labels: dict[str, tuple[str, Labeller]] = LABELS,
) -> dict[str, Bool[Tensor, "n ctx"]]:
    """Every label of `labels` for each token of `rows`: a token is labelled when its first
    non-blank character is (a blank token: its first character), so " thou" counts as the
    word and a newline token does not start a line. Each row is labelled as a text of
    its own."""
    out = {name: torch.zeros(rows.shape, dtype=torch.bool) for name in labels}
    for r, row in enumerate(rows.tolist()):
        pieces = [decode([t]) for t in row]
        text = "".join(pieces)
        anchors, offset = [], 0
        for piece in pieces:
            blank = len(piece) - len(piece.lstrip())
            anchors.append(offset + (blank if blank < len(piece) else 0))
            offset += len(piece)
        for name, (_, labeller) in labels.items():
            mask = labeller(text)
            hit = [bool(p) and mask[a] for p, a in zip(pieces, anchors, strict=True)]
            out[name][r] = torch.tensor(hit)
    return out


def speaker_lines(text: str) -> int:
    """Number of speaker-name lines in `text`."""
    return sum(bool(SPEAKER.match(line.strip())) for _, line in _lines(text))


# --- exact detection scores -------------------------------------------------------------------
@torch.no_grad()
def detection_scores(
    acts: Float[Tensor, "n F"], labels: Bool[Tensor, " n"], chunk: int = 128
) -> dict[str, Tensor]:
    """How well each latent detects `labels`: AUC, and precision / recall / F1 of firing.

    AUC is Mann-Whitney's: the probability that a labelled position has a higher
    activation than an unlabelled one, ties counted half (average ranks), computed
    exactly with a sort per latent. A label that is all True or all False has no AUC
    (NaN). Returns float64 tensors [F] keyed 'auc', 'precision', 'recall', 'f1', and
    'density' (fraction of positions where the latent fires).
    """
    acts, labels = acts.float(), labels.bool()
    n, n_pos = labels.numel(), int(labels.sum())
    n_neg = n - n_pos
    fires = acts > 0
    tp = fires[labels].sum(0).double()
    n_fire = fires.sum(0).double()
    aucs = []
    pos_rows = labels.nonzero().squeeze(1)
    for start in range(0, acts.shape[1], chunk):
        cols = acts[:, start : start + chunk].T.contiguous()  # [c, n]
        ordered = cols.sort(dim=1).values
        values = cols[:, pos_rows].contiguous()  # [c, n_pos]
        below = torch.searchsorted(ordered, values, right=False).double()
        upto = torch.searchsorted(ordered, values, right=True).double()
        rank_sum = ((below + upto + 1) / 2).sum(1)  # average 1-based ranks of the positives
        aucs.append((rank_sum - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))
    auc = torch.cat(aucs) if n_pos and n_neg else torch.full((acts.shape[1],), float("nan"))
    return {
        "auc": auc.double(),
        "precision": tp / n_fire.clamp_min(1),
        "recall": tp / max(n_pos, 1),
        "f1": 2 * tp / (n_fire + n_pos).clamp_min(1),
        "density": n_fire / max(n, 1),
    }


def best_detectors(scores: dict[str, Tensor], n: int = 3, by: str = "f1") -> list[dict[str, float]]:
    """The `n` latents with the highest score `by`, each with all its scores."""
    order = scores[by].nan_to_num(-1.0).argsort(descending=True)[:n].tolist()
    return [{"feature": f, **{k: float(v[f]) for k, v in scores.items()}} for f in order]


def relu_interp(rows: list[dict[str, Any]], l0: float, key: str) -> float | None:
    """ReLU-L1's `key` at L0 `l0`, read off its sweep in log L0 (`metrics.at_l0`)."""
    return metrics.at_l0(((r["l0"], r[key]) for r in rows if r["arch"] == "standard"), l0)


@torch.no_grad()
def sample_label_rates(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    new_tokens: int,
    seed: int,
    labels: dict[str, tuple[str, Labeller]] = LABELS,
) -> dict[str, Any]:
    """Sample a continuation of each prompt (temperature 0.8, `seed`) and measure the labels
    on the generated characters (labelled in the context of the prompt): per label, and
    for 'upper' (the share of generated letters in capitals), the mean rate over
    continuations and its standard error; speaker-name lines per 1,000 generated
    characters; the first continuation."""
    from lmscope.generate import generate

    result = generate(
        model, prompts, tokenizer=tokenizer, max_new_tokens=new_tokens, temperature=0.8,
        seed=seed, overflow="slide", eos_token_id=[],
    )  # fmt: skip
    per: dict[str, list[float]] = {k: [] for k in [*labels, "upper"]}
    texts = []
    for prompt, new in zip(prompts, result.new_tokens, strict=True):
        head, cont = tokenizer.decode(prompt), tokenizer.decode(new)
        texts.append(cont)
        for k, (_, labeller) in labels.items():
            mask = labeller(head + cont)[len(head) :]
            per[k].append(sum(mask) / max(len(mask), 1))
        letters = [c for c in cont if c.isalpha()]
        per["upper"].append(sum(c.isupper() for c in letters) / max(len(letters), 1))
    n = len(prompts)
    return {
        "rates": {k: sum(v) / n for k, v in per.items()},
        "sem": {k: float(torch.tensor(v).std()) / n**0.5 if n > 1 else 0.0 for k, v in per.items()},
        "speaker_lines_per_1k": 1000
        * sum(map(speaker_lines, texts))
        / max(sum(map(len, texts)), 1),
        "example": texts[0] if texts else "",
    }


# --- pictures ---------------------------------------------------------------------------------
def plot_tradeoff(rows: Sequence[dict[str, Any]], target_l0: float, path: Path) -> None:
    """FVU and loss recovered against L0: the ReLU-L1 sweep as a line, the others as points."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = figure(ncols=2, width=5.0, height=3.8)
    for ax, key, label in zip(
        axes, ("fvu", "loss_recovered"), ("FVU", "loss recovered"), strict=True
    ):
        relu = sorted((r for r in rows if r["arch"] == "standard"), key=lambda r: r["l0"])
        if relu:
            ax.plot([r["l0"] for r in relu], [r[key] for r in relu], "o-", label="ReLU-L1 (sweep)")
        for arch, marker in (("topk", "s"), ("jumprelu", "^")):
            for r in (r for r in rows if r["arch"] == arch):
                ax.plot(r["l0"], r[key], marker, markersize=9, label=r["label"])
        ax.axvline(target_l0, color="grey", linestyle=":", label=f"target L0 = {target_l0:g}")
        ax.set_xscale("log")
        # A sweep spans less than a decade, where a log axis has no labelled tick: label
        # the powers of two inside the data's range instead.
        l0s = [r["l0"] for r in rows if r["l0"] > 0] + [target_l0]
        ax.set_xticks([2.0**i for i in range(-2, 16) if min(l0s) / 1.5 <= 2**i <= max(l0s) * 1.5])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per token, held-out text)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("reconstruction (lower is better)")
    axes[1].set_title("next-character loss recovered (higher is better)")
    save_figure(fig, path)


def _shown(token: str) -> str:
    """A token as drawn: newlines as ↵ and spaces as · (so blank tokens stay visible)."""
    return token.replace("\n", "↵").replace(" ", "·")


def _shade(ax: Any, y: float, tokens: list[str], acts: list[float], top: float) -> None:
    """Draw one context: each token (one character wide per character, so a word-piece
    model's tokens line up as text) on a background as dark as its activation."""
    import matplotlib.colors as mcolors

    cmap = mcolors.LinearSegmentedColormap.from_list("act", ["#ffffff", "#e8590c"])
    x = 0.0
    for text, act in zip(tokens, acts, strict=True):
        shown = _shown(text)
        width = max(len(shown), 1)
        x += width / 2  # centre of this token's cells
        ax.text(
            x - 0.5,
            y,
            shown,
            family="monospace",
            fontsize=7,
            ha="center",
            va="center",
            bbox={
                "boxstyle": "square,pad=0.12",
                "lw": 0,
                "fc": cmap(min(max(act / top, 0.0), 1.0)) if top > 0 else "white",
            },
        )
        x += width / 2


def plot_feature_cards(cards: Sequence[dict[str, Any]], path: Path, n_contexts: int = 5) -> None:
    """One row per feature: its top contexts shaded by activation, and histograms of its
    activation on labelled and unlabelled held-out positions.

    A card: 'title', 'contexts' ([(characters, activations)], strongest first), and
    'on' / 'off' (activations on / off the label, 1-D tensors).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(cards),
        2,
        figsize=(13, 2.2 * len(cards) + 0.3),
        dpi=110,
        gridspec_kw={"width_ratios": [3.2, 1]},
        squeeze=False,
    )
    for (left, right), card in zip(axes, cards, strict=True):
        contexts = card["contexts"][:n_contexts]
        top = max((max(a) for _, a in contexts), default=0.0)
        width = max((sum(max(len(_shown(t)), 1) for t in ts) for ts, _ in contexts), default=1)
        for i, (chars, acts) in enumerate(contexts):
            _shade(left, -i, chars, acts, top)
        left.set_xlim(-1, width)
        left.set_ylim(-max(len(contexts), 1) + 0.4, 0.6)
        left.axis("off")
        left.set_title(card["title"], fontsize=9, loc="left")
        on, off = card["on"].float(), card["off"].float()
        hi = float(torch.cat([on, off]).max()) if on.numel() + off.numel() else 1.0
        bins = torch.linspace(0, max(hi, 1e-6), 30).tolist()
        for values, name in ((off[off > 0], "off label"), (on[on > 0], "on label")):
            if values.numel():  # a density of nothing is undefined
                right.hist(values.tolist(), bins=bins, alpha=0.6, density=True, label=name)
        right.set_xlabel("activation where it fires", fontsize=8)
        right.tick_params(labelsize=7)
        if right.get_legend_handles_labels()[0]:
            right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_clamping(rows: Sequence[dict[str, Any]], labels: Sequence[str], path: Path) -> None:
    """Label rates in the generated text under each clamping condition (grouped bars)."""
    fig, ax = figure(width=8.0, height=3.8)
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r["rates"][label] for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [r["condition"] for r in rows], fontsize=8)
    ax.set_ylabel("% of generated characters\n(upper: % of letters in capitals)")
    ax.set_title("generated text with the feature clamped (same seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)
