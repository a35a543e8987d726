"""``lmscope convert``: between lmscope's format and Hugging Face checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
import typer

from lmscope.cli import app
from lmscope.cli.common import console
from lmscope.errors import LmscopeError

#: dtype names accepted by --dtype.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Model directory: lmscope save or Hugging Face.")],
    dst: Annotated[Path, typer.Argument(help="Directory to write.")],
    to: Annotated[
        str, typer.Option(help="Format to write: 'lmscope' or 'hf' (Hugging Face).")
    ] = "lmscope",
    family: Annotated[
        str | None,
        typer.Option(help="Hugging Face model_type to write (default: the source's)."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Cast the weights: float32, bfloat16 or float16.")
    ] = None,
) -> None:
    """Convert SRC to DST; tokenizer files come along (a tokenizer.json is always written)."""
    from lmscope.io.hf import convert as convert_model

    if to not in ("lmscope", "hf"):
        raise LmscopeError(f"--to {to!r} is invalid; use 'lmscope' or 'hf'.")
    if dtype is not None and dtype not in DTYPES:
        raise LmscopeError(f"--dtype {dtype!r} is invalid; use one of {', '.join(DTYPES)}.")
    target: Literal["hf", "lmscope"] = "hf" if to == "hf" else "lmscope"
    out = convert_model(src, dst, to=target, family=family, dtype=DTYPES[dtype] if dtype else None)
    files = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    console.print(f"wrote {out} ({target}): {files}", highlight=False, soft_wrap=True)
