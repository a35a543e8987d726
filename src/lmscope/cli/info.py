"""``lmscope info``: where a model's parameters, compute and memory go."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, print_json, resolve_config
from lmscope.model import ARCHITECTURES
from lmscope.model.stats import summary


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@app.command()
def info(
    spec: Annotated[str, typer.Argument(help="Preset name, config JSON file or model directory.")],
    seq_len: Annotated[
        int | None, typer.Option(help="Context length for attention FLOPs (default: max_seq_len).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Parameters by component, FLOPs and KV-cache bytes per token, and the hook names."""
    cfg = resolve_config(spec)
    with torch.device("meta"):  # counts need shapes only: no memory, no random init
        model = ARCHITECTURES[cfg.architecture](cfg)
    data = summary(model, seq_len)
    if json:
        print_json(data)
        return

    params = data["params"]
    table = Table(title=f"{cfg.name or spec}: {cfg.architecture}, {_human(params['total'])} params")
    table.add_column("component")
    table.add_column("params", justify="right")
    table.add_column("share", justify="right")
    for comp, count in params["by_component"].items():
        table.add_row(comp, f"{count:,}", f"{params['percent'][comp]:.1f}%")
    table.add_row("[bold]total[/]", f"[bold]{params['total']:,}[/]", "100%")
    console.print(table)
    if cfg.tie_embeddings:
        console.print("  unembedding is tied to the embedding (counted once, under embedding)")
    flops = data["flops_per_token"]
    console.print(
        f"FLOPs per token (context {flops['seq_len']}): forward {_human(flops['forward'])}, "
        f"training ~{_human(flops['training'])}"
    )
    kv = data["kv_cache_bytes_per_token"]
    console.print(
        f"KV cache per token: {_human(kv['float32'], 'B')} (fp32), "
        f"{_human(kv['bfloat16'], 'B')} (bf16)"
    )
    hooks = data["hooks"]
    console.print(f"{hooks['count']} hook points ({{i}} = layer index):")
    for pattern in hooks["patterns"]:
        console.print(f"  {pattern}", highlight=False)
