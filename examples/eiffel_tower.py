"""Study (a): where SmolLM2-135M knows that the Eiffel Tower is in Paris.

The seeds' standing example made real, on "The Eiffel Tower is in the city of":

1. the logit lens: at which layer " Paris" becomes the top token, its probability and
   rank after every block;
2. direct logit attribution of every head and MLP layer to the logit difference
   " Paris" - " Rome";
3. the MLP neurons whose direct contribution to the " Paris" logit is largest, read as
   key-value memories: the tokens their value vectors promote, and the contexts of a
   Shakespeare sample where they fire most;
4. activation patching of the residual stream, layer x position, from the clean prompt
   into the corrupted "The Colosseum is in the city of" (same number of tokens), to
   locate the fact.

Every analysis is one call to `lmscope.interpret`; this script only chooses the inputs
(the prompts are in `_eiffel_report`, with the parts of the report computed from the
numbers) and writes docs/studies/eiffel_tower.md and its pictures::

    python examples/eiffel_tower.py            # a few minutes on a 2-core CPU
    python examples/eiffel_tower.py --quick    # seconds: a tiny random model
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from _common import fmt, markdown_table, run_script
from _eiffel_report import (
    BASELINE,
    CLEAN,
    CORRUPTED,
    NEURON_NOTE,
    TARGET,
    interpretation,
    locate,
    plot_lens,
)
from _interpret import InterpretStudy, cell, image, interpret_parser, open_interpret
from lmscope.errors import LmscopeError
from lmscope.interpret import (
    LogitDiff,
    corpus_token_batches,
    direct_logit_attribution,
    logit_lens,
    neuron_value_tokens,
    patch_residual,
    top_contexts_of_neurons,
)

NAME = "eiffel_tower"


def pick_corrupted(study: InterpretStudy) -> tuple[str, list[int], list[int]]:
    """The first corrupted prompt with as many tokens as the clean one, and both id lists."""
    tok = study.tokenizer
    clean = tok.encode(CLEAN)
    for text in CORRUPTED:
        ids = tok.encode(text)
        if len(ids) == len(clean):
            return text, clean, ids
    raise LmscopeError(
        f"none of the corrupted prompts has {len(clean)} tokens like {CLEAN!r} with this "
        "tokenizer; add one to CORRUPTED."
    )


def top_next(study: InterpretStudy, ids: list[int], k: int = 5) -> list[tuple[str, float]]:
    """The model's k most likely next tokens after `ids`, with probabilities."""
    with torch.no_grad():
        probs = study.model(torch.tensor([ids]))[0, -1].float().softmax(-1)
    top = probs.topk(k)
    return [
        (study.tokenizer.decode([int(i)]), float(p))
        for i, p in zip(top.indices, top.values, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as tables and pictures)."""
    parser = interpret_parser(__doc__.splitlines()[0], default_model="smollm2")
    parser.add_argument(
        "--neurons", type=int, default=None, help="neurons shown (default 5, quick 2)"
    )
    parser.add_argument(
        "--corpus-tokens",
        type=int,
        default=None,
        help="Shakespeare tokens scanned for the neurons' contexts (default 4096, quick 256)",
    )
    args = parser.parse_args(argv)
    n_neurons = args.neurons or (2 if args.quick else 5)
    corpus_tokens = args.corpus_tokens or (256 if args.quick else 4096)
    with open_interpret(NAME, __file__, args, argv, kind="decoder") as study:
        return run(study, n_neurons, corpus_tokens)


def run(study: InterpretStudy, n_neurons: int, corpus_tokens: int) -> dict[str, Any]:
    model, tok = study.model, study.tokenizer
    target_id = tok.encode(TARGET)[0]
    corrupted_text, clean_ids, corrupted_ids = pick_corrupted(study)
    tokens = [tok.decode([i]) for i in clean_ids]
    sections: list[str] = []

    # --- the model's answer --------------------------------------------------------
    answers = {CLEAN: top_next(study, clean_ids), corrupted_text: top_next(study, corrupted_ids)}
    rows = [
        [cell(prompt), *[f"{cell(t)} {p:.3f}" for t, p in top]] for prompt, top in answers.items()
    ]
    swapped = (
        ""
        if corrupted_text == CORRUPTED[0]
        else f" ({CORRUPTED[0]!r} has a different number of tokens with this tokenizer, "
        f"so the corrupted prompt is {corrupted_text!r}.)"
    )
    sections.append(
        "## The model's answer\n\n"
        f"Both prompts have {len(clean_ids)} tokens ({' | '.join(map(repr, tokens))}).{swapped}"
        " Next-token probabilities:\n\n"
        + markdown_table(["prompt", "1st", "2nd", "3rd", "4th", "5th"], rows)
    )

    study.lap("answers")
    # --- 1. logit lens ---------------------------------------------------------------
    lens = logit_lens(model, clean_ids, target=TARGET, tokenizer=tok)
    assert lens.target_probs is not None and lens.target_ranks is not None
    probs = lens.target_probs[:, -1].tolist()
    ranks = lens.target_ranks[:, -1].tolist()
    first = lens.first_top1()
    first_layer = None if first is None else lens.layers[lens.labels.index(first)]
    lens_rows = [
        [layer, fmt(p, 4), r, cell(lens.top_tokens[i][-1][0]), fmt(float(lens.top_probs[i, -1, 0]))]
        for i, (layer, p, r) in enumerate(zip(lens.layers, probs, ranks, strict=True))
    ]
    plot_lens(study, lens.layers, probs, ranks)
    lens.plot(study.picture("lens"), title=f"logit lens, P({TARGET.strip()}) per position")
    where = (
        f"after {first_layer} of {model.cfg.n_layers} blocks"
        if first_layer is not None
        else "at no layer"
    )
    sections.append(
        "## 1. Logit lens\n\n"
        f"Each stream read out through the final norm and unembedding (row *l* = after *l* "
        f"blocks; row {model.cfg.n_layers} is the model's output), at the last position "
        f'("{tokens[-1]}"). `{TARGET}` becomes the top token {where}.\n\n'
        + image(study, study.picture(), "P(Paris) and its rank by layer")
        + "\n\n<details><summary>every layer</summary>\n\n"
        + markdown_table(
            ["blocks applied", f"P({TARGET.strip()})", "rank", "top-1 token", "top-1 prob"],
            lens_rows,
        )
        + "\n\n</details>\n\n"
        + image(study, study.picture("lens"), "logit lens heatmap")
    )

    study.lap("logit lens")
    # --- 2. direct logit attribution -------------------------------------------------
    dla = direct_logit_attribution(
        model, clean_ids, target=TARGET, baseline=BASELINE, granularity="heads", tokenizer=tok
    )
    dla.plot(study.picture("dla"), top=20, title=f"direct logit attribution to{TARGET} -{BASELINE}")
    top_components = dla.top(12, by="abs")
    mlp_share = sum(v for label, v in dla.ranked() if label.endswith("_mlp_out"))
    head_share = sum(v for label, v in dla.ranked() if label.startswith("L"))
    sections.append(
        "## 2. Direct logit attribution\n\n"
        f"The logit difference `{TARGET}` - `{BASELINE}` at the last position is "
        f"{dla.logit:.3f}; the components' direct contributions sum to {dla.total:.3f} "
        f"(every head, every MLP layer, the embeddings and the final norm's constant, with "
        f"the final norm's scale frozen at its value on this input). All MLP layers together "
        f"write {mlp_share:.2f}, all heads {head_share:.2f}. The 12 largest by magnitude:\n\n"
        + markdown_table(
            ["component", "contribution"], [[label, fmt(v)] for label, v in top_components]
        )
        + "\n\n"
        + image(study, study.picture("dla"), "direct logit attribution")
    )

    study.lap("direct logit attribution")
    # --- 3. neurons as key-value memories ---------------------------------------------
    # Ranked by the Paris - Rome difference, like the components above: a neuron that
    # raises every city's logit alike does not tell Paris from Rome.
    neurons = direct_logit_attribution(
        model, clean_ids, target=TARGET, baseline=BASELINE, granularity="neurons", tokenizer=tok
    ).top(n_neurons, kind="neuron")
    chosen = [(int(label[1:].split("N")[0]), int(label.split("N")[1]), v) for label, v in neurons]
    batches = corpus_token_batches(tok, max_tokens=corpus_tokens, seq_len=64, batch_size=8)
    contexts: dict[tuple[int, int], list[Any]] = {}
    for layer in sorted({layer for layer, _, _ in chosen}):
        wanted = [n for lay, n, _ in chosen if lay == layer]
        found = top_contexts_of_neurons(
            model, tok, batches, layer, wanted, k=3, window=(10, 3), progress=study.progress
        )
        contexts |= {(layer, n): found[n] for n in wanted}
    # Each neuron's activation at the last position: a gated (SwiGLU) neuron can be
    # negative, and then it writes minus its value vector (promoting the value's bottom).
    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in sorted({c[0] for c in chosen})]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([clean_ids]), names_filter=hooks)
    neuron_rows, neuron_numbers = [], []
    for layer, neuron, value in chosen:
        act = float(cache[f"blocks.{layer}.mlp.hook_post"][0, -1, neuron])
        # Every token, ranked: the top 8 to show and where " Paris" falls.
        values = neuron_value_tokens(model, layer, neuron, k=model.cfg.vocab_size, tokenizer=tok)
        written = values.top if act >= 0 else values.bottom
        paris_rank = 1 + [i for i, _, _ in written].index(target_id)
        promoted = " ".join(cell(t) for _, t, _ in written[:8])
        ctx = contexts[(layer, neuron)]
        shown = "<br>".join(f"{c.activation:.2f}: {cell(c.highlighted)}" for c in ctx)
        neuron_rows.append(
            [f"L{layer}N{neuron}", fmt(value), fmt(act, 2), promoted, f"{paris_rank:,}", shown]
        )
        neuron_numbers.append(
            {
                "layer": layer,
                "neuron": neuron,
                "attribution": value,
                "activation": act,
                "promotes": [t for _, t, _ in written[:8]],
                "paris_rank": paris_rank,
                "contexts": [c.highlighted for c in ctx],
            }
        )
    sections.append(
        '## 3. The neurons that write " Paris", as key-value memories\n\n'
        f"The {n_neurons} MLP neurons (of {model.cfg.n_layers} x {model.cfg.mlp_dim}) with the "
        f"largest direct contribution to `{TARGET}` over `{BASELINE}` on this prompt (as in "
        "section 2; a neuron that raises every city's logit alike is not what tells Paris "
        "from Rome). *Activation here*: the neuron's activation at the last position. "
        "*Value*: the tokens the neuron's output vector promotes most when read through the "
        "final norm and unembedding (for a negative activation, the tokens minus the value "
        f"promotes), and the rank of `{TARGET}` among all {model.cfg.vocab_size:,}. *Key*: "
        "the 3 tokens where its activation is largest in "
        f"{sum(b.numel() for b in batches):,} tokens of Shakespeare (the `shakespeare` "
        "package's plays, 64-token windows; `[[token]]` marks the firing token, with its "
        "activation).\n\n"
        + markdown_table(
            [
                "neuron",
                f"DLA to{TARGET} -{BASELINE}",
                "activation here",
                "value: top promoted tokens",
                f"rank of{TARGET}",
                "key: top contexts",
            ],
            neuron_rows,
        )
    )
    found = {f"L{x['layer']}N{x['neuron']}" for x in neuron_numbers}
    if NEURON_NOTE[0] <= found:
        sections.append(NEURON_NOTE[1])

    study.lap("neurons")
    # --- 4. activation patching ---------------------------------------------------------
    metric = LogitDiff(target_id, tok.encode(BASELINE)[0])
    patch = patch_residual(
        model, clean_ids, corrupted_ids, metric, tokenizer=tok, progress=study.progress
    )
    patch.plot(
        study.picture("patching"),
        title="residual stream patching, clean -> corrupted (1 = clean logit diff)",
    )
    located = locate(patch.values, tokens, clean_ids, corrupted_ids)
    grid_rows = [
        [layer, *[fmt(float(v), 2) for v in patch.values[i]]]
        for i, layer in enumerate(patch.layers)
    ]
    sections.append(
        "## 4. Activation patching: where is the fact?\n\n"
        f'Run on the corrupted prompt ("{corrupted_text}": logit difference '
        f"{patch.corrupted_metric:.2f}) and replace the residual stream entering block *l* at "
        f"one position by its value on the clean prompt ({patch.clean_metric:.2f}); each cell "
        "is the logit difference after the patch, normalised so that 0 = corrupted and "
        "1 = clean.\n\n"
        f"**{located['sentence']}**\n\n"
        + image(study, study.picture("patching"), "residual patching heatmap")
        + "\n\n<details><summary>the grid</summary>\n\n"
        + markdown_table(
            ["layer", *[f"{i} {cell(t)}" for i, t in enumerate(patch.labels or tokens)]],
            grid_rows,
        )
        + "\n\n</details>"
    )

    study.lap("patching")
    sections.append(
        interpretation(
            dla, first_layer, located, neuron_numbers, model.cfg.n_layers, model.cfg.vocab_size
        )
    )
    intro = (
        f'On "{CLEAN}" the model puts {answers[CLEAN][0][1]:.2f} of its next-token '
        f"probability on `{answers[CLEAN][0][0]}`. Four views of how it gets there, each "
        "one call to `lmscope.interpret` (`logit_lens`, `direct_logit_attribution`, "
        "`neuron_value_tokens` / `top_contexts_of_neurons`, `patch_residual`)."
    )
    study.write("Study: the Eiffel Tower is in Paris (SmolLM2-135M)", intro, sections)
    return {
        "corrupted": corrupted_text,
        "answers": answers,
        "lens_probs": probs,
        "lens_ranks": ranks,
        "first_top1_layer": first_layer,
        "logit_diff": dla.logit,
        "dla_total": dla.total,
        "dla_top": top_components,
        "neurons": neuron_numbers,
        "patching": patch.values,
        "patching_clean": patch.clean_metric,
        "patching_corrupted": patch.corrupted_metric,
        "located": located,
    }


if __name__ == "__main__":
    run_script(main)
