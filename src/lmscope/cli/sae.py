"""``lmscope sae ...``: the sparse-autoencoder command group.

The group itself; its commands live in modules that register on `sae_app`
(`lmscope.cli.sae_run`: train, eval, features, steer).
"""

from __future__ import annotations

import typer

from lmscope.cli import app

sae_app = typer.Typer(
    name="sae",
    help="Sparse autoencoders: train, evaluate, browse features and steer with them.",
    no_args_is_help=True,
)
app.add_typer(sae_app, name="sae")
