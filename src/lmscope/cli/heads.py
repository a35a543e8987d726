"""``lmscope heads`` (detector scores for every head) and ``lmscope attention`` (one head's
pattern on a text, the seeds' "print the attention weights of a head").

MODEL is anything `open_model` opens: a run or model directory, a ``.gguf``, a real
model's name (``smollm2``, ``minilm``) or a preset with random weights.

Special tokens: the detectors draw random tokens from the vocabulary minus the
tokenizer's special tokens. A decoder's sequences start with its BOS token when it has
one (``--no-bos`` to leave it out); an encoder whose tokenizer has ``[CLS]`` and
``[SEP]`` (BERT, MiniLM) reads ``[CLS] ... [SEP]``, as it was trained to, for the
detectors and for ``attention --text``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json, prompt_option
from lmscope.errors import LmscopeError
from lmscope.interpret.attention_view import (
    MAX_TABLE_TOKENS,
    attention_pattern,
    plot_attention,
    print_attention,
)
from lmscope.interpret.heads import DETECTORS, HeadScores, detect_heads
from lmscope.interpret.tokens import as_token_ids, token_label

Model = Annotated[
    str,
    typer.Argument(
        help="Run or model directory, .gguf file, real model name (smollm2, minilm) or "
        "preset (random weights)."
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of the random tokens and of a preset's weights.")]
Plot = Annotated[Path | None, typer.Option(help="Write a PNG picture here.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Bos = Annotated[
    bool, typer.Option("--bos/--no-bos", help="Start a decoder's sequences with its BOS token.")
]


def special_tokens(model: Any, tokenizer: Any | None, bos: bool) -> tuple[int | None, int | None]:
    """The ids that open and close a sequence: ``[CLS]`` / ``[SEP]`` for BERT-style
    encoders, the BOS token (if `bos` and there is one) for decoders."""
    if tokenizer is None:
        return None, None
    special = tokenizer.special_tokens()
    if model.cfg.architecture == "encoder" and "[CLS]" in special and "[SEP]" in special:
        return special["[CLS]"], special["[SEP]"]
    return (tokenizer.bos_id if bos else None), None


def _top_table(result: HeadScores, top: int) -> Table:
    """Rank x detector: the `top` heads of each detector as ``L.H score``."""
    table = Table(title="Top heads per detector (fraction of attention on the target keys)")
    table.add_column("#", justify="right")
    tops = {name: result.top(name, top) for name in result.detectors}
    for name in result.detectors:
        table.add_column(name.replace("_", " "), no_wrap=True)
    for rank in range(min(top, len(next(iter(tops.values()))))):
        cells = []
        for name in result.detectors:
            layer, head, score = tops[name][rank]
            cells.append(f"L{layer}.H{head}  " + ("n/a" if score != score else f"{score:.3f}"))
        table.add_row(str(rank + 1), *cells)
    return table


@app.command()
def heads(
    model: Model,
    detectors: Annotated[
        str, typer.Option(help=f"Comma-separated detectors: {', '.join(DETECTORS)}.")
    ] = ",".join(DETECTORS),
    seq_len: Annotated[
        int, typer.Option(help="Length of the random sequence R (read as R + R).")
    ] = 50,
    batch: Annotated[int, typer.Option(help="Random sequences to average over.")] = 8,
    top: Annotated[int, typer.Option(help="Heads to list per detector.")] = 10,
    bos: Bos = True,
    seed: Seed = 0,
    plot: Plot = None,
    json: Json = False,
) -> None:
    """Score every attention head as a previous-token, duplicate-token, induction, BOS-sink head."""
    if top < 1:
        raise LmscopeError(f"--top must be >= 1, got {top}.")
    net, tokenizer, label = open_model(model, seed=seed)
    first, last = special_tokens(net, tokenizer, bos)
    avoid = set(tokenizer.special_tokens().values()) if tokenizer is not None else set()
    names = [d.strip() for d in detectors.split(",") if d.strip()]
    result = detect_heads(
        net,
        detectors=names,
        seq_len=seq_len,
        batch=batch,
        seed=seed,
        bos=first,
        eos=last,
        avoid=avoid,
    )
    if plot is not None:
        result.plot(plot)
    if json:
        print_json({"model": label, **result.to_dict(top)})
        return
    console.print(f"[bold]{label}[/]: {net.cfg.n_layers} layers x {net.cfg.n_heads} heads")
    console.print(_top_table(result, top))
    loss = result.induction_loss
    if loss is not None:
        console.print(
            f"loss on R + R (nats/token): first copy {loss.first_half:.3f}, second copy "
            f"{loss.second_half:.3f}, gap {loss.gap:.3f}"
        )
    parts = [token_label(tokenizer, first)] if first is not None else []
    parts += ["R", "R"] + ([token_label(tokenizer, last)] if last is not None else [])
    wrap = " + ".join(parts)
    console.print(
        f"scored on {batch} sequences {escape(wrap)}, len(R) = {seq_len}, seed {seed}; "
        f"{result.seconds:.2f} s",
        style="dim",
    )
    if plot is not None:
        console.print(f"heatmaps written to {plot}")


@app.command()
def attention(
    model: Model,
    layer: Annotated[int, typer.Option(help="Layer of the head (negative counts back).")],
    head: Annotated[int, typer.Option(help="Head index in that layer.")],
    text: Annotated[
        str | None, typer.Option(help="The input, encoded by the model's tokenizer.")
    ] = None,
    tokens: Annotated[
        str | None, typer.Option(help="The input as token ids, e.g. 5,17,42.")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option(help="Longest input the table shows whole (then: the last ones).")
    ] = MAX_TABLE_TOKENS,
    bos: Annotated[
        bool, typer.Option("--bos/--no-bos", help="Prepend a decoder's BOS token to --text.")
    ] = False,
    seed: Seed = 0,
    plot: Plot = None,
    json: Json = False,
) -> None:
    """Print (and plot) one head's attention pattern on a text: who looks at whom."""
    net, tokenizer, label = open_model(model, seed=seed)
    ids = as_token_ids(prompt_option(text, tokens), tokenizer, net.cfg.vocab_size)
    if text is not None:
        first, last = special_tokens(net, tokenizer, bos)
        prefix = [] if first is None else [first]
        suffix = [] if last is None else [last]
        ids = torch.tensor([*prefix, *ids.tolist(), *suffix])
    if ids.numel() > net.cfg.max_seq_len:
        raise LmscopeError(
            f"the input has {ids.numel()} tokens; this model reads at most {net.cfg.max_seq_len}."
        )
    result = attention_pattern(net, ids, layer, head, tokenizer=tokenizer)
    if plot is not None:
        plot_attention(result, plot)
    if json:
        print_json({"model": label, **result.to_dict()})
        return
    console.print(f"[bold]{label}[/]")
    print_attention(result, console, max_tokens)
    if plot is not None:
        console.print(f"heatmap written to {plot}")
