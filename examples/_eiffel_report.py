"""The prompts of the Eiffel Tower study (examples/eiffel_tower.py) and the parts of its
report computed from its numbers.

- The prompts: the clean one, the corrupted ones to patch into (the first with as many
  tokens is used), the target and baseline answers, and a hand-written reading of the
  neurons found on the full run.
- `plot_lens`: P(target) and its rank by layer; `locate`: the patching grid as a
  sentence (where one cell restores at least THRESHOLD of the clean behaviour);
  `interpretation`: what the numbers show, written from the numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from _common import figure, save_figure
from _interpret import InterpretStudy

CLEAN = "The Eiffel Tower is in the city of"
#: Corrupted prompts in order of preference: the first with as many tokens as CLEAN is used.
CORRUPTED = (
    "The Colosseum is in the city of",
    "The Colosseum is located in the city of",
    "The Vatican is in the city of",
)
TARGET, BASELINE = " Paris", " Rome"
#: A reading of the neuron table written by hand after the full run on SmolLM2; it is
#: printed only when those neurons are among the ones found (as on that run).
NEURON_NOTE = (
    {"L24N1005", "L25N1120", "L27N1392"},
    "Read by hand: L24N1005, the largest, fires negatively here (about -22), and minus "
    "its value promotes ` capitals`, ` metropolis` and ` saint`: a capital-city memory "
    "rather than a Paris one. L25N1120's value promotes French-looking pieces (` pour`, "
    "`ateur`, `iques`, ` dé`) and its strongest Shakespeare contexts are the French of "
    '*Henry VI* ("Paysans, pauvres gens de France"); L27N1392 fires there too, on '
    '" France", and on "the Bastard of Orleans". On this small sample their keys look '
    "like France, their values like capitals and French; ` Paris` itself ranks no better "
    "than 276th among any of the five values' promotions.",
)
#: A patched cell "carries the fact" when it restores at least this share of the clean
#: logit difference (0 = corrupted run, 1 = clean run).
THRESHOLD = 0.5


def plot_lens(
    study: InterpretStudy, layers: list[int], probs: list[float], ranks: list[int]
) -> None:
    """P(target) (log scale) and its rank after each block, at the last position."""
    fig, (left, right) = figure(ncols=2, width=5.0, height=3.6)
    left.semilogy(layers, [max(p, 1e-30) for p in probs], marker="o", markersize=3)
    left.set_ylabel(f"P({TARGET.strip()}) (log scale)")
    right.semilogy(layers, ranks, marker="o", markersize=3, color="tab:red")
    right.invert_yaxis()
    right.set_ylabel(f"rank of {TARGET.strip()} (1 = top)")
    for ax in (left, right):
        ax.set_xlabel("blocks applied (logit lens)")
        ax.grid(alpha=0.3)
    fig.suptitle(f'logit lens at "{CLEAN.split()[-1]}" (last position)')
    fig.set_dpi(100)
    save_figure(fig, study.picture())


def locate(
    values: torch.Tensor, tokens: list[str], clean: list[int], corrupted: list[int]
) -> dict[str, Any]:
    """Summarise a [layer, position] denoising grid as a sentence: where patching one
    cell restores at least THRESHOLD of the clean behaviour."""
    differ = [p for p, (a, b) in enumerate(zip(clean, corrupted, strict=True)) if a != b]
    last = len(tokens) - 1
    strong = values >= THRESHOLD  # [layer, pos]
    parts, found = [], {}
    for name, positions in (("subject", differ), ("last", [last])):
        layers = sorted({int(layer) for layer in strong[:, positions].any(1).nonzero()})
        found[name] = layers
        if layers:
            where = ", ".join(f'{p} ("{tokens[p]}")' for p in positions if strong[:, p].any())
            parts.append(f"layers {_ranges(layers)} at position {where}")
    other = [p for p in range(len(tokens)) if p not in differ and p != last]
    found["other"] = sorted({int(layer) for layer in strong[:, other].any(1).nonzero()})
    sentence = (
        "The fact is located at " + " and at ".join(parts) + f" (cells restoring >= "
        f"{THRESHOLD:.0%} of the clean logit difference)."
        if parts
        else f"No single cell restores {THRESHOLD:.0%} of the clean logit difference."
    )
    if found["other"]:
        sentence += f" Other positions also reach it at layers {_ranges(found['other'])}."
    best = int(values.argmax())
    layer, pos = divmod(best, values.shape[1])
    return {
        "sentence": sentence,
        "subject_positions": differ,
        "subject_layers": found["subject"],
        "last_layers": found["last"],
        "other_layers": found["other"],
        "max": (layer, pos, float(values.max())),
    }


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def interpretation(
    dla: Any,
    first_layer: int | None,
    located: dict[str, Any],
    neurons: list[dict[str, Any]],
    n: int,
    vocab: int,
) -> str:
    """The numbers' reading, written from the numbers (checked by eye on the full run)."""
    top = dla.top(3)
    subject, last = located["subject_layers"], located["last_layers"]
    lines = [
        "## What the numbers show\n",
        f"- The logit lens first ranks `{TARGET}` top after block {first_layer} of {n}."
        if first_layer is not None
        else f"- The logit lens never ranks `{TARGET}` first.",
    ]
    lines.append(
        "- Directly, the largest writers of the Paris-over-Rome difference are "
        + ", ".join(f"{label} ({value:.2f})" for label, value in top)
        + "; direct attribution only measures what each component writes into the final "
        "stream, not what it enables downstream."
    )
    ranks = [f"L{x['layer']}N{x['neuron']}: {x['paris_rank']:,}" for x in neurons]
    lines.append(
        f"- The neurons' value vectors do not point at `{TARGET}` by themselves: its rank "
        f"among the tokens each one promotes is {', '.join(ranks)} (of "
        f"{vocab:,}); none is a neuron whose value is about Paris."
        if all(x["paris_rank"] > 100 for x in neurons)
        else f"- Rank of `{TARGET}` among the tokens each neuron's value promotes: "
        + ", ".join(ranks)
        + "."
    )
    if subject and last:
        handover = (
            ", so between those layers the information moves from the subject to the final "
            "token (the picture of Meng et al.'s causal tracing, here on one prompt pair)."
            if max(subject) < min(last) + 3
            else "."
        )
        lines.append(
            f"- Patching one residual cell restores most of the clean answer at the subject's "
            f"positions up to layer {max(subject)} and at the last position from layer "
            f"{min(last)} on{handover}"
        )
    return "\n".join(lines)
