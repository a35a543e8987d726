"""``lmscope tokenizer``: train a byte-level BPE on your text, or look at an encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmscope.cli import app
from lmscope.cli.common import console, print_json
from lmscope.tokenizers import Tokenizer, load_tokenizer, train_tokenizer

tokenizer_app = typer.Typer(
    help="Train a tokenizer on your text, or show how one encodes a string.",
    no_args_is_help=True,
)
app.add_typer(tokenizer_app, name="tokenizer")

_SAMPLE_CHARS = 80


def encoding_table(tokenizer: Tokenizer, text: str) -> dict[str, Any]:
    """`text`'s ids and each id's text, as plain data (for printing and --json)."""
    ids = tokenizer.encode(text)
    return {
        "text": text,
        "ids": ids,
        "pieces": [tokenizer.decode([i]) for i in ids],
        "chars_per_token": len(text) / max(len(ids), 1),
    }


def _print_encoding(data: dict[str, Any]) -> None:
    console.print(f"sample: {data['text']!r}", highlight=False, markup=False, soft_wrap=True)
    shown = " ".join(f"{p!r}:{i}" for p, i in zip(data["pieces"], data["ids"], strict=True))
    console.print(f"{len(data['ids'])} tokens: {shown}", highlight=False, markup=False)


def _sample_text(data: str | None, field: str | None, encoding: str) -> str:
    """A line of the training text to show the encoding on."""
    from lmscope.data import default_corpus, resolve_sources

    sources = resolve_sources(default_corpus() if data is None else data, field, encoding)
    for text in sources[0].iter_text():
        for line in text.splitlines():
            if len(line.strip()) > 20:
                return line.strip()[:_SAMPLE_CHARS]
        return text[:_SAMPLE_CHARS]
    return ""


@tokenizer_app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="Directory to save the tokenizer in.")],
    data: Annotated[
        str | None,
        typer.Option(help="Text file, folder, glob or JSONL file (default: Shakespeare)."),
    ] = None,
    field: Annotated[
        str | None, typer.Option(help="JSONL: the key holding the text (a.b for nested).")
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Size of the vocabulary to learn.")] = 4096,
    min_frequency: Annotated[
        int, typer.Option(help="A pair is merged only if seen this often.")
    ] = 2,
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a byte-level BPE (Hugging Face tokenizers) and save it to --out."""
    with console.status("training byte-level BPE...", spinner="dots"):
        tokenizer = train_tokenizer(
            out,
            data=data,
            field=field,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            encoding=encoding,
        )
    sample = encoding_table(tokenizer, _sample_text(data, field, encoding))
    if json:
        print_json({"out": str(out), **tokenizer.describe(), "sample": sample})
        return
    console.print(
        f"saved a byte-level BPE with [bold]{tokenizer.vocab_size:,}[/] tokens to {out}",
        highlight=False,
    )
    _print_encoding(sample)


@tokenizer_app.command("encode")
def encode(
    tokenizer: Annotated[str, typer.Argument(help="Tokenizer directory or tokenizer.json.")],
    text: Annotated[str, typer.Argument(help="Text to encode.")],
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Show the ids and pieces a saved tokenizer gives for some text."""
    loaded = load_tokenizer(tokenizer)
    data = encoding_table(loaded, text)
    if json:
        print_json({**loaded.describe(), **data})
        return
    console.print(f"{loaded.kind} tokenizer, {loaded.vocab_size:,} ids", highlight=False)
    _print_encoding(data)
