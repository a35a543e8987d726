"""Study (d): a "Love - Hate" steering vector that shifts SmolLM2-135M's sentiment.

Activation addition (Turner et al., 2023) with a difference-of-means vector: the mean
residual stream of positive prompts minus that of negative ones (`steering_vector` on
`STEERING_PAIRS`: "Love"/"Hate", "I love you"/"I hate you", ...) at the input of one
block, added back with a coefficient while the model reads neutral prompts and
generates (`steer`). The effect is measured as the change in log-probability of
positive target words (" great", " wonderful", ...) and of negative ones, next-token
and over a greedy continuation (`steering_effect`).

A sweep over layers at coefficient 1 picks the layer that raises the positive words
most (``--layer`` fixes it); then that layer is measured at every coefficient. Writes
docs/studies/steering.md and its picture::

    python examples/steering.py            # a few minutes on a 2-core CPU
    python examples/steering.py --quick    # seconds: a tiny random model
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from _common import fmt, markdown_table, run_script
from _interpret import InterpretStudy, cell, image, interpret_parser, open_interpret
from lmscope.interpret import STEERING_PAIRS, steering_effect, steering_vector

NAME = "steering"
#: Neutral openings whose next words can go either way.
PROMPTS = (
    "I think that this movie is",
    "Yesterday I went to the park and it was",
    "My new neighbour seems",
    "The food at the restaurant was",
    "Honestly, the weather today is",
)
POSITIVE = (" great", " wonderful", " happy", " love", " good", " beautiful", " amazing")
NEGATIVE = (" terrible", " awful", " sad", " hate", " bad", " horrible", " angry")
#: The vector is large next to the stream (see the report), so the useful range starts
#: well below 1; the largest coefficients show where steering breaks the model, and
#: negative ones steer the other way (towards "Hate").
COEFFICIENTS = (-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SWEEP_COEFFICIENT = 1.0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as tables and a picture)."""
    parser = interpret_parser(__doc__.splitlines()[0], default_model="smollm2")
    parser.add_argument("--layer", type=int, default=None, help="steer here (default: sweep)")
    parser.add_argument(
        "--tokens", type=int, default=None, help="continuation tokens (default 24, quick 4)"
    )
    args = parser.parse_args(argv)
    with open_interpret(NAME, __file__, args, argv, kind="decoder") as study:
        return run(study, args.tokens or (4 if args.quick else 24))


def vector_at(study: InterpretStudy, layer: int) -> Any:
    """The difference-of-means vector at the input of block `layer`."""
    positive = [p for p, _ in STEERING_PAIRS]
    negative = [n for _, n in STEERING_PAIRS]
    return steering_vector(
        study.model,
        study.tokenizer,
        positive,
        negative,
        layer=layer,
        hook="resid_pre",
        prefix=[study.tokenizer.bos_id],
    )


def sweep_layers(n_layers: int, quick: bool) -> list[int]:
    """Layers the sweep tries: every other block, all but the last few."""
    if quick:
        return list(range(n_layers))
    return list(range(1, n_layers - 4, 2))


def run(study: InterpretStudy, n_tokens: int) -> dict[str, Any]:
    model, tok = study.model, study.tokenizer
    n_layers = model.cfg.n_layers
    # --- 1. which layer ------------------------------------------------------------
    sweep = []
    layers = (
        [study.args.layer]
        if study.args.layer is not None
        else sweep_layers(n_layers, study.args.quick)
    )
    for layer in layers:
        vec = vector_at(study, layer)
        effect = steering_effect(
            model, tok, list(PROMPTS), vec, [SWEEP_COEFFICIENT], list(POSITIVE),
            baseline_words=list(NEGATIVE),
        )  # fmt: skip
        row = effect.rows()[effect.coefficients.index(SWEEP_COEFFICIENT)]
        sweep.append(
            {
                "layer": layer,
                "norm": vec.norm,
                "delta": row["delta"],
                "baseline_delta": row["baseline_delta"],
                "separation": row["delta_vs_baseline"],
            }
        )
    best = max(sweep, key=lambda r: r["delta"])
    layer = best["layer"]

    # --- 2. the chosen layer at every coefficient ------------------------------------
    vec = vector_at(study, layer)
    effect = steering_effect(
        model,
        tok,
        list(PROMPTS),
        vec,
        list(COEFFICIENTS),
        list(POSITIVE),
        baseline_words=list(NEGATIVE),
        continuation_tokens=n_tokens,
    )
    effect.plot(
        study.picture(), title=f"steering at the input of block {layer}: Δ log-prob vs coefficient"
    )
    rows = effect.rows()
    resid_norm = stream_norm(study, vec.hook)

    sweep_table = markdown_table(
        ["layer", "|vector|", "Δ positive", "Δ negative", "Δ positive - Δ negative"],
        [
            [
                r["layer"],
                fmt(r["norm"], 1),
                fmt(r["delta"]),
                fmt(r["baseline_delta"]),
                fmt(r["separation"]),
            ]
            for r in sweep
        ],
    )  # fmt: skip
    effect_table = markdown_table(
        [
            "coefficient",
            "c x |vector| / |stream|",
            "mean log p(positive)",
            "Δ positive",
            "Δ negative",
            "Δ pos - Δ neg",
            "Δ positive over continuation",
        ],
        [
            [
                fmt(r["coefficient"], 2),
                fmt(r["coefficient"] * vec.norm / resid_norm, 2),
                fmt(r["target_logprob"]),
                fmt(r["delta"]),
                fmt(r["baseline_delta"]),
                fmt(r["delta_vs_baseline"]),
                fmt(r.get("continuation_delta")),
            ]
            for r in rows
        ],
    )
    texts = effect.continuations or {}
    gen_rows = [
        [fmt(c, 2), *[cell(PROMPTS[i] + t) for i, t in enumerate(texts[c][:3])]]
        for c in effect.coefficients
    ]
    gen_table = markdown_table(["coefficient", *[f"prompt {i + 1}" for i in range(3)]], gen_rows)
    sections = [
        "## Choosing the layer\n\n"
        f"The vector at the input of each block, added at coefficient {SWEEP_COEFFICIENT:g} "
        "to every position of the prompts; mean change (nats) of the next-token "
        "log-probability of the positive and the negative words. The layer that raises "
        f"the positive words most is used below: **block {layer}**.\n\n" + sweep_table,
        "## Effect against the coefficient\n\n"
        f"At block {layer}: |vector| = {vec.norm:.1f}, while the residual stream there has a "
        f"mean norm of {resid_norm:.1f} (positions after the first). Log-probabilities are "
        "means over the 5 prompts and the 7 words of each set; *over continuation* averages "
        f"the positive words' log-probability over the {n_tokens} greedy tokens generated "
        "under the same steering.\n\n"
        + effect_table
        + "\n\n"
        + image(study, study.picture(), "steering effect by coefficient"),
        "## Generations\n\n"
        f"Greedy continuations ({n_tokens} tokens) of the first three prompts under each "
        "coefficient (the prompt is steered too; negative coefficients add the "
        '"Hate" - "Love" direction):\n\n' + gen_table,
        interpretation(rows, layer, vec.norm / resid_norm),
    ]
    pairs = ", ".join(f'"{p}"/"{n}"' for p, n in STEERING_PAIRS)
    intro = (
        f"Steering vector: difference of the mean `resid_pre` activation at the last token "
        f"over {len(STEERING_PAIRS)} contrastive pairs ({pairs}), each read after a "
        "`<bos>` prefix. Prompts: "
        + "; ".join(f'"{p}"' for p in PROMPTS)
        + ". Positive words: "
        + ", ".join(f"`{w}`" for w in POSITIVE)
        + "; negative: "
        + ", ".join(f"`{w}`" for w in NEGATIVE)
        + "."
    )
    study.write("Study: steering SmolLM2 with a Love - Hate vector", intro, sections)
    return {"sweep": sweep, "layer": layer, "rows": rows, "continuations": texts}


def stream_norm(study: InterpretStudy, hook: str) -> float:
    """Mean norm of the residual stream at `hook` over the prompts (position 0, the
    attention sink with a much larger norm, left out)."""
    norms = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([study.tokenizer.encode(prompt)])
            _, cache = study.model.run_with_cache(ids, names_filter=hook)
            norms.append(cache[hook][0, 1:].norm(dim=-1))
    return float(torch.cat(norms).mean())


def interpretation(rows: list[dict[str, Any]], layer: int, ratio: float) -> str:
    """What the numbers show, from the numbers (the generations are there to read)."""
    best = max(rows, key=lambda r: r["delta"])
    top = rows[-1]
    broken = [r["coefficient"] for r in rows if r["coefficient"] > 0 and r["delta"] < 0]
    text = (
        "## What the numbers show\n\n"
        f"At block {layer}, the vector raises the positive words' next-token "
        f"log-probability most at coefficient {best['coefficient']:g} "
        f"({best['delta']:+.2f} nats), where the negative words move by "
        f"{best['baseline_delta']:+.2f}: the direction separates the two sets. "
    )
    if broken:
        c = min(broken)
        text += (
            f"From coefficient {c:g} on (the added vector {c * ratio:.1f} times the "
            "stream's mean norm) the positive words lose probability too "
            f"({top['delta']:+.2f} nats at {top['coefficient']:g}): the vector then "
            "overwhelms the stream rather than steering it. "
        )
    negative = [r for r in rows if r["coefficient"] < 0]
    if negative:
        low = max(negative, key=lambda r: r["baseline_delta"])
        text += (
            "Steering the other way raises the negative words most at coefficient "
            f"{low['coefficient']:g} ({low['baseline_delta']:+.2f} nats, positive words "
            f"{low['delta']:+.2f}). "
        )
    return text + (
        "The log-probabilities do not measure fluency: the generations do. "
        "One vector, five prompts, greedy decoding: this shows that the direction moves "
        "sentiment on these prompts, not how reliably it does so in general."
    )


if __name__ == "__main__":
    run_script(main)
