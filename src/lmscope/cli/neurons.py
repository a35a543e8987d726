"""``lmscope neurons``: MLP neurons as key-value memories (Geva et al., 2021).

For ``--neuron N`` of ``--layer L``, or for the neurons of layer L that write a target
token's logit most directly on a text (``--top-for " Paris" --text "..."``, by direct
logit attribution at the last position), it prints:

- the tokens each neuron's value vector promotes and suppresses (through the final
  norm and the unembedding) and the tokens whose embeddings match its key best;
- its top-activating contexts over a corpus sample, the token highlighted: by default
  ``--max-tokens`` tokens of the Shakespeare corpus spread over the plays
  (`lmscope.interpret.corpus`), or ``--data PATH`` (file, folder or glob of text).

MODEL is anything `open_model` opens (run or model directory, ``.gguf``, ``smollm2``,
a preset with random weights).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json, prompt_option
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution import direct_logit_attribution
from lmscope.interpret.corpus import corpus_token_batches
from lmscope.interpret.indices import check_layer, check_neuron, mlp_at
from lmscope.interpret.neurons import (
    ActivatingContext,
    NeuronTokens,
    neuron_key_tokens,
    neuron_value_tokens,
    top_contexts_of_neurons,
)


def _chosen(
    net: Any,
    tokenizer: Any,
    layer: int,
    neuron: int | None,
    top_for: str | None,
    prompt: Any,
    n: int,
) -> dict[int, float | None]:
    """Neuron -> its logit attribution (None for --neuron): the neurons to show."""
    if (neuron is None) == (top_for is None):
        raise LmscopeError('give --neuron N, or --top-for TOKEN with --text (e.g. " Paris").')
    if neuron is not None:
        return {check_neuron(mlp_at(net, layer), neuron, layer): None}
    result = direct_logit_attribution(
        net, prompt, target=top_for, granularity="neurons", layer=layer, tokenizer=tokenizer
    )
    return {int(label.split("N")[1]): value for label, value in result.top(n, kind="neuron")}


def _tokens_cell(tokens: NeuronTokens) -> tuple[str, str]:
    def fmt(rows: list[tuple[int, str, float]]) -> str:
        return ", ".join(f"{label} {score:+.2f}" for _, label, score in rows)

    return fmt(tokens.top), fmt(tokens.bottom)


def _contexts_table(neuron: int, contexts: list[ActivatingContext]) -> Table:
    table = Table(title=f"Neuron {neuron}: top-activating contexts", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("act", justify="right")
    table.add_column("seq:pos", justify="right")
    table.add_column("context (token highlighted)", overflow="fold")
    for rank, ctx in enumerate(contexts, 1):
        table.add_row(
            str(rank), f"{ctx.activation:.3f}", f"{ctx.sequence}:{ctx.position}", ctx.markup
        )
    return table


@app.command()
def neurons(
    model: Annotated[
        str,
        typer.Argument(
            help="Run or model directory, .gguf file, real model name (smollm2) or preset."
        ),
    ],
    layer: Annotated[int, typer.Option(help="MLP layer (negative counts back).")],
    neuron: Annotated[int | None, typer.Option(help="The neuron to show.")] = None,
    top_for: Annotated[
        str | None,
        typer.Option(help='Show the neurons that write this token\'s logit most (" Paris").'),
    ] = None,
    text: Annotated[str | None, typer.Option(help="The prompt for --top-for.")] = None,
    tokens: Annotated[str | None, typer.Option(help="The prompt as token ids.")] = None,
    n_neurons: Annotated[int, typer.Option(help="Neurons to show with --top-for.")] = 3,
    data: Annotated[
        list[Path] | None, typer.Option(help="Text to scan (default: Shakespeare sample).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens of the corpus to scan.")] = 4096,
    seq_len: Annotated[int, typer.Option(help="Tokens per scanned window.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    k: Annotated[int, typer.Option(help="Contexts and tokens to list.")] = 10,
    window: Annotated[int, typer.Option(help="Tokens of context before the token.")] = 12,
    contexts: Annotated[
        bool, typer.Option("--contexts/--no-contexts", help="Scan the corpus for contexts.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of a preset's random weights.")] = 0,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """A neuron's value-vector tokens and its top-activating contexts over a corpus."""
    start = time.perf_counter()
    net, tokenizer, label = open_model(model, seed=seed)
    layer = check_layer(net, layer)
    prompt = prompt_option(text, tokens) if top_for is not None else None
    if top_for is None and (text is not None or tokens is not None):
        raise LmscopeError("--text / --tokens go with --top-for; with --neuron give neither.")
    chosen = _chosen(net, tokenizer, layer, neuron, top_for, prompt, n_neurons)
    values = {n: neuron_value_tokens(net, layer, n, k, tokenizer=tokenizer) for n in chosen}
    keys = {n: neuron_key_tokens(net, layer, n, k, tokenizer=tokenizer) for n in chosen}
    found: dict[int, list[ActivatingContext]] = {}
    n_scanned = 0
    if contexts:
        batches = corpus_token_batches(
            tokenizer, data, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size
        )
        n_scanned = sum(b.numel() for b in batches)
        found = top_contexts_of_neurons(
            net, tokenizer, batches, layer, list(chosen), k, window=(window, 4)
        )
    seconds = time.perf_counter() - start

    if json:
        print_json(
            {
                "model": label,
                "layer": layer,
                "target": top_for,
                "scanned_tokens": n_scanned,
                "corpus": [str(p) for p in data] if data else "shakespeare",
                "neurons": [
                    {
                        "neuron": n,
                        "logit_attribution": attribution,
                        "value_tokens": values[n].to_dict(),
                        "key_tokens": keys[n].to_dict(),
                        "contexts": [c.to_dict() for c in found.get(n, [])],
                    }
                    for n, attribution in chosen.items()
                ],
                "seconds": seconds,
            }
        )
        return
    console.print(f"[bold]{label}[/]: layer {layer}, {mlp_at(net, layer).d_mlp} neurons")
    table = Table(title="Value vectors through the unembedding; keys against the embeddings")
    table.add_column("neuron", justify="right")
    if top_for is not None:
        table.add_column(f"logit({top_for!r})", justify="right")
    table.add_column("value promotes", overflow="fold")
    table.add_column("value suppresses", overflow="fold")
    table.add_column("key matches (embeddings)", overflow="fold")
    for n, attribution in chosen.items():
        promotes, suppresses = _tokens_cell(values[n])
        cells = [str(n)] + ([f"{attribution:+.3f}"] if attribution is not None else [])
        table.add_row(*cells, promotes, suppresses, _tokens_cell(keys[n])[0])
    console.print(table)
    for n in chosen:
        if n in found:
            console.print(_contexts_table(n, found[n]))
    corpus = ", ".join(map(str, data)) if data else "Shakespeare sample"
    scan = f"scanned {n_scanned} tokens of {corpus}; " if contexts else ""
    console.print(f"{scan}{seconds:.1f} s", style="dim")
