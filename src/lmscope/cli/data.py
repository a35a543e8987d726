"""``lmscope data``: tokenize a corpus into memory-mapped shards, and describe the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, print_json
from lmscope.data import SPLITS, TokenData, prepare_dataset

data_app = typer.Typer(
    help="Tokenize text once into memory-mapped token shards for training.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


def _summary(meta: dict[str, Any], title: str) -> Table:
    """Tokens per split, dtype, vocabulary and corpus size of a meta.json."""
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for split in SPLITS:
        info = meta["splits"][split]
        shards = len(info["shards"])
        table.add_row(
            f"{split} tokens", f"{info['tokens']:,} ({shards} shard{'s' * (shards != 1)})"
        )
    totals = meta["totals"]
    table.add_row("dtype", meta["dtype"])
    table.add_row("tokenizer", f"{meta['tokenizer']['kind']}, vocab {meta['vocab_size']:,}")
    table.add_row("sources", f"{len(meta['sources']):,}")
    table.add_row("bytes / chars", f"{totals['bytes']:,} / {totals['chars']:,}")
    return table


@data_app.command("prepare")
def prepare(
    out: Annotated[Path, typer.Option(help="Directory for the shards, meta.json and tokenizer.")],
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Text file, folder, glob or JSONL file; repeatable (default: Shakespeare)."
        ),
    ] = None,
    field: Annotated[
        str | None, typer.Option(help="JSONL: the key holding the text (a.b for nested).")
    ] = None,
    tokenizer: Annotated[
        str, typer.Option(help="char, bpe (trained on the data), gpt2, or a tokenizer dir.")
    ] = "char",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size when --tokenizer bpe.")] = 4096,
    val_fraction: Annotated[
        float, typer.Option(help="Share of each source's tokens (its end) kept for validation.")
    ] = 0.1,
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    overwrite: Annotated[
        bool, typer.Option(help="Replace prepared data already in --out.")
    ] = False,
    json: Annotated[
        bool, typer.Option("--json", help="Print meta.json and timing as JSON.")
    ] = False,
) -> None:
    """Tokenize the corpus into uint16/uint32 memmap shards with a train / val split."""
    columns = (
        TextColumn("[bold]tokenizing[/]"),
        BarColumn(bar_width=30),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    # Started at the first bytes read, so that errors before then print as one clean line.
    bar = Progress(*columns, console=console, transient=True, disable=json)
    task = bar.add_task("prepare", total=None)

    def advance(n_bytes: int, total_bytes: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, advance=n_bytes, total=total_bytes)

    try:
        result = prepare_dataset(
            out,
            data=data or None,
            field=field,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            val_fraction=val_fraction,
            encoding=encoding,
            overwrite=overwrite,
            progress=advance,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    if json:
        print_json(
            {
                "out": str(out),
                "seconds": result.seconds,
                "tokens_per_second": result.tokens_per_second,
                "meta": result.meta,
            }
        )
        return
    console.print(_summary(result.meta, f"prepared {out}"))
    console.print(
        f"{result.meta['totals']['tokens']:,} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s)",
        highlight=False,
    )


@data_app.command("info")
def info(
    directory: Annotated[Path, typer.Argument(help="A directory made by `lmscope data prepare`.")],
    json: Annotated[bool, typer.Option("--json", help="Print meta.json.")] = False,
) -> None:
    """Describe prepared data: tokens per split, dtype, tokenizer, sources."""
    data = TokenData(directory)
    if json:
        print_json(data.meta)
        return
    console.print(_summary(data.meta, str(directory)))
