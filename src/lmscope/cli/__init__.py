"""The ``lmscope`` command: thin wrappers over library functions, one module per group.

User errors (`LmscopeError`) print as one clear line and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from lmscope.cli.common import console
from lmscope.errors import LmscopeError

app = typer.Typer(
    name="lmscope",
    help="Build, train, run and look inside transformer language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module registers its commands on `app`.
from lmscope.cli import (  # noqa: E402, F401
    convert,
    data,
    demo,
    embed,
    explain,
    generate,
    heads,
    info,
    lens,
    load,
    neurons,
    patch,
    probe,
    sae,
    sae_files,
    sae_run,
    steer,
    tokenizer,
    train,
)


def main() -> None:
    """Entry point of the ``lmscope`` console script."""
    try:
        app()
    except LmscopeError as exc:
        # soft_wrap: one logical line, whatever the terminal width.
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
