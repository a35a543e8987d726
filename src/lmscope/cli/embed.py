"""``lmscope embed``: sentence embeddings (mean pooling + normalisation), default MiniLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, print_json


@app.command("embed")
def embed_command(
    sentences: Annotated[list[str], typer.Argument(help="Sentences to embed.")],
    model: Annotated[
        Path | None,
        typer.Option(help="Encoder directory (default: all-MiniLM-L6-v2 from its package)."),
    ] = None,
    similarity: Annotated[
        bool, typer.Option("--similarity", help="Also print the cosine-similarity table.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Embed SENTENCES; one unit-length vector each (dot product = cosine similarity)."""
    from lmscope.embeddings import embed, minilm_path
    from lmscope.embeddings import similarity as cosine

    vectors = embed(sentences, model)
    sims = cosine(vectors) if similarity else None
    if json:
        data: dict = {
            "model": str(model or minilm_path()),
            "dim": vectors.shape[1],
            "sentences": list(sentences),
            "embeddings": vectors.tolist(),
        }
        if sims is not None:
            data["similarity"] = sims.tolist()
        print_json(data)
        return
    console.print(f"{len(sentences)} sentence(s), {vectors.shape[1]} dims, unit length")
    for text, vector in zip(sentences, vectors, strict=True):
        head = ", ".join(f"{v:+.4f}" for v in vector[:6].tolist())
        console.print(f"  {text!r}: [{head}, ...]", highlight=False, soft_wrap=True)
    if sims is not None:
        table = Table(title="cosine similarity")
        table.add_column("")
        for i in range(len(sentences)):
            table.add_column(str(i), justify="right")
        for i, (text, row) in enumerate(zip(sentences, sims.tolist(), strict=True)):
            label = f"{i}: {text[:40]}"
            table.add_row(label, *(f"{v:.3f}" for v in row))
        console.print(table)
