"""Study (c): print the attention weights of one head and look for structure.

The seeds' exercise, on SmolLM2-135M: pick a previous-token head with the detectors
(`detect_heads`, as in the induction-heads study; ``--layer``/``--head`` choose another),
run a ~30-token sentence through the model, and show the head's attention pattern as
the printed table of `lmscope attention` (`print_attention`) and as a heatmap
(`plot_attention`). A few numbers read off the pattern say what structure is there.

Writes docs/studies/attention_head.md and its picture::

    python examples/attention_head.py            # about a minute on a 2-core CPU
    python examples/attention_head.py --quick    # seconds: a tiny random model
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console

from _common import fmt, markdown_table, run_script
from _interpret import InterpretStudy, code_block, image, interpret_parser, open_interpret
from lmscope.interpret import attention_pattern, detect_heads, plot_attention, print_attention

NAME = "attention_head"
#: About 30 tokens with repeated words, so a previous-token head and others can show.
TEXT = (
    "The cat sat on the mat, and the dog sat on the rug. When the cat saw the dog, "
    "the cat ran off the mat."
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a table and a picture)."""
    parser = interpret_parser(__doc__.splitlines()[0], default_model="smollm2")
    parser.add_argument("--text", default=TEXT, help="the input (about 30 tokens)")
    parser.add_argument("--layer", type=int, default=None, help="layer of the head to show")
    parser.add_argument("--head", type=int, default=None, help="the head (with --layer)")
    args = parser.parse_args(argv)
    with open_interpret(NAME, __file__, args, argv, kind="decoder") as study:
        return run(study)


def choose_head(study: InterpretStudy) -> tuple[int, int, float | None, str]:
    """(layer, head, previous-token score, how chosen): --layer/--head, else the head
    with the best previous-token score on repeated random tokens."""
    args = study.args
    tok = study.tokenizer
    scores = detect_heads(
        study.model,
        detectors=["previous_token"],
        seq_len=10 if args.quick else 50,
        batch=2 if args.quick else 8,
        seed=args.seed,
        bos=tok.bos_id,
        avoid=set(tok.special_tokens().values()),
    )
    if args.layer is not None:
        head = args.head or 0
        return args.layer, head, float(scores.scores["previous_token"][args.layer, head]), "given"
    layer, head, score = scores.top("previous_token", 1)[0]
    return layer, head, score, "the detectors' best previous-token head"


def run(study: InterpretStudy) -> dict[str, Any]:
    layer, head, score, how = choose_head(study)
    ap = attention_pattern(study.model, study.args.text, layer, head, tokenizer=study.tokenizer)
    n = len(ap.labels)
    # The printed table, as `lmscope attention` prints it (every token shown).
    buffer = io.StringIO()
    print_attention(ap, Console(file=buffer, width=400, color_system=None), max_tokens=n)
    plot_attention(ap, study.picture(), title=f"SmolLM2 layer {layer} head {head}")

    pattern = ap.pattern
    queries = torch.arange(1, n)
    on_previous = pattern[queries, queries - 1]
    on_first = pattern[queries, 0]
    on_self = pattern[queries, queries]
    argmax_prev = int((pattern[1:].argmax(-1) == queries - 1).sum())
    numbers = {
        "layer": layer,
        "head": head,
        "detector_score": score,
        "tokens": n,
        "mean_on_previous": float(on_previous.mean()),
        "mean_on_first": float(on_first.mean()),
        "mean_on_self": float(on_self.mean()),
        "argmax_is_previous": argmax_prev,
    }
    weakest = int(on_previous.argmin()) + 1
    table = markdown_table(
        ["measure (queries 1..n-1)", "value"],
        [
            ["mean weight on the previous token", fmt(numbers["mean_on_previous"])],
            ["mean weight on the first token", fmt(numbers["mean_on_first"])],
            ["mean weight on itself", fmt(numbers["mean_on_self"])],
            [
                "rows whose largest weight is the previous token",
                f"{argmax_prev} of {n - 1}",
            ],
            [
                "weakest previous-token row",
                f"{weakest} `{ap.labels[weakest]}` ({float(on_previous.min()):.2f})",
            ],
        ],
    )
    score_text = f" (previous-token score {score:.2f} on repeated random tokens)" if score else ""
    sections = [
        f"## Layer {layer}, head {head}\n\n"
        f"Chosen as {how}{score_text}. The input, {n} tokens: `{study.args.text}`\n\n"
        "The table `print_attention` prints (row: the query token that looks; column: the "
        "key token looked at; each row sums to 1; `·` is exactly 0, the masked future):\n\n"
        + code_block(buffer.getvalue()),
        image(study, study.picture(), f"attention of layer {layer} head {head}"),
        "## Structure\n\n" + table,
        "## What the pattern shows\n\n" + interpretation(numbers),
    ]
    intro = (
        'The seeds suggest to "print the attention weights of a head and look for '
        "structure\". `attention_pattern` runs the model up to the head's layer and returns "
        "its pattern; `print_attention` / `lmscope attention` print it, `plot_attention` "
        "draws it."
    )
    study.write(f"Study: the attention of one head (layer {layer}, head {head})", intro, sections)
    return numbers


def interpretation(numbers: dict[str, Any]) -> str:
    """One reading of the structure, from the numbers."""
    n = numbers["tokens"]
    prev, first = numbers["mean_on_previous"], numbers["mean_on_first"]
    text = (
        f"The weight sits on the sub-diagonal: on average {prev:.0%} of each row goes to "
        f"the token just before the query, and that is the largest weight in "
        f"{numbers['argmax_is_previous']} of {n - 1} rows; the rest goes mostly to the "
        f"first token ({first:.0%} on average), the usual attention sink."
    )
    if prev < 0.5:
        text = (
            f"The structure is weaker than a clean previous-token head: {prev:.0%} of each "
            f"row on the token before, {first:.0%} on the first token, and the previous "
            f"token gets the largest weight in {numbers['argmax_is_previous']} of {n - 1} rows."
        )
    return text


if __name__ == "__main__":
    run_script(main)
