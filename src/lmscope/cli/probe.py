"""``lmscope probe``: which neurons of a layer track a labelled property, and a linear probe.

Wraps `lmscope.interpret.probe_study.probe_texts` on a built-in labelled set
(``--dataset sentiment``: 40 positive and 40 negative sentences written for lmscope).
``--contexts K`` also scans a corpus for the top three neurons' top-activating contexts
(`lmscope.interpret.neurons`, as ``lmscope neurons`` does for one neuron).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json
from lmscope.errors import LmscopeError
from lmscope.interpret.corpus import corpus_token_batches
from lmscope.interpret.datasets import DATASETS, load_dataset
from lmscope.interpret.probe_study import probe_texts


@app.command()
def probe(
    model: Annotated[
        str, typer.Argument(help="Run or model directory, .gguf, real model, or preset.")
    ],
    layer: Annotated[int, typer.Option(help="Block to look in (negative counts back).")],
    dataset: Annotated[
        str, typer.Option(help=f"Labelled set: {', '.join(DATASETS)}.")
    ] = "sentiment",
    top: Annotated[int, typer.Option(help="Neurons to list.")] = 10,
    positions: Annotated[
        str, typer.Option(help="Pool each text's tokens: 'mean' or 'last'.")
    ] = "mean",
    neuron_hook: Annotated[str, typer.Option(help="Hook searched column by column.")] = "post",
    probe_hook: Annotated[str, typer.Option(help="Hook the logistic probe reads.")] = "resid_post",
    contexts: Annotated[
        int, typer.Option(help="Top-activating corpus contexts to show per top-3 neuron.")
    ] = 0,
    corpus: Annotated[
        list[Path] | None,
        typer.Option(help="Text to scan for --contexts (default: Shakespeare sample)."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Corpus tokens to scan for --contexts.")] = 4096,
    seed: Annotated[
        int, typer.Option(help="Seed of the train/test split (and of a preset's weights).")
    ] = 0,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Rank single neurons by AUC with a label, and fit a logistic probe on the residual stream."""
    if positions not in ("mean", "last"):
        raise LmscopeError(f"--positions {positions!r} is invalid: use 'mean' or 'last'.")
    data = load_dataset(dataset)
    net, tokenizer, label = open_model(model, seed=seed)
    if tokenizer is None:
        raise LmscopeError(f"{label} has no tokenizer; probing a text set needs one.")
    study = probe_texts(
        net,
        tokenizer,
        data,
        layer=layer,
        neuron_hook=neuron_hook,
        probe_hook=probe_hook,
        positions=positions,  # type: ignore[arg-type]
        top=top,
        seed=seed,
    )
    found: dict[int, list[Any]] = {}
    if contexts > 0:
        batches = corpus_token_batches(tokenizer, corpus, max_tokens=max_tokens)
        found = study.corpus_contexts(net, tokenizer, batches, k=contexts)
    if json:
        report = {"model": label} | study.to_dict()
        if found:
            report["contexts"] = {
                f"L{study.layer}N{n}": [c.to_dict() for c in ctx] for n, ctx in found.items()
            }
        print_json(report)
        return
    metrics = study.probe.metrics
    test = metrics.get("test", {})
    accuracy, auc = test.get("accuracy", float("nan")), test.get("auc", float("nan"))
    console.print(
        f"[bold]{label}[/]: {data.name} ({len(data)} texts, label 1 = {data.positive}), "
        f"layer {study.layer}, tokens pooled by {study.positions}",
        highlight=False,
    )
    console.print(
        f"logistic probe on {study.probe_hook}: test accuracy {accuracy:.3f}, test AUC {auc:.3f}"
        f" (train accuracy "
        f"{metrics['train']['accuracy']:.3f}; {study.probe.to_dict()['n_test']} held out)",
        highlight=False,
    )
    table = Table(title=f"single neurons ({study.neuron_hook}) ranked by |AUC - 0.5|")
    for column in ("rank", "neuron", "AUC", "corr", "mean +", "mean -", "largest on"):
        table.add_column(column, justify="left" if column == "largest on" else "right")
    for row in study.rows():
        table.add_row(
            str(row["rank"]),
            row["name"],
            f"{row['auc']:.3f}",
            f"{row['correlation']:+.3f}",
            f"{row['mean_positive']:.3f}",
            f"{row['mean_negative']:.3f}",
            row["top_text"],
        )
    console.print(table)
    for neuron, ctx in found.items():
        console.print(f"[bold]L{study.layer}N{neuron}[/] fires most on:")
        for c in ctx:
            console.print(f"  {c.activation:7.3f}  {c.markup}", highlight=False)
    if not found and study.rows():
        best = study.rows()[0]["index"]
        console.print(
            f"[dim]corpus contexts and value-vector tokens of a neuron: lmscope neurons MODEL "
            f"--layer {study.layer} --neuron {best}, or --contexts K here.[/]",
            highlight=False,
        )
