"""``lmscope sae info | convert``: what an SAE directory holds, and SAELens's format both ways.

Both read lmscope's format (``config.json`` + ``model.safetensors``) and SAELens's
(``cfg.json`` + ``sae_weights.safetensors``), detected by the files present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from lmscope.cli.common import console, print_json
from lmscope.cli.sae import sae_app

_METRICS = ("steps", "tokens", "l0", "fvu", "mse", "dead_fraction", "dense_fraction")


def _density(directory: Path) -> torch.Tensor | None:
    """Feature density saved with the SAE: lmscope's, or SAELens's log10 sparsity."""
    from lmscope.serialization import read_safetensors

    if (directory / "feature_density.safetensors").is_file():
        return read_safetensors(directory / "feature_density.safetensors")["density"].double()
    if (directory / "sparsity.safetensors").is_file():
        return 10.0 ** read_safetensors(directory / "sparsity.safetensors")["sparsity"].double()
    return None


def sae_summary(path: str | Path) -> dict[str, Any]:
    """Plain data about the SAE at `path`: format, config, weights, saved metrics."""
    import json

    from lmscope.sae import load_sae

    directory = Path(path)
    sae = load_sae(directory)
    cfg = sae.cfg
    norms = sae.decoder_norms().detach().double()
    data: dict[str, Any] = {
        "path": str(directory),
        "format": "lmscope" if (directory / "config.json").is_file() else "saelens",
        "class": type(sae).__name__,
        "config": cfg.to_dict(),
        "params": sum(p.numel() for p in sae.parameters()),
        "decoder_norm": {
            "min": float(norms.min()),
            "mean": float(norms.mean()),
            "max": float(norms.max()),
        },
    }
    if (directory / "metrics.json").is_file():
        data["metrics"] = json.loads((directory / "metrics.json").read_text())
    density = _density(directory)
    if density is not None:
        alive = density[density > 0]
        data["density"] = {
            "dead_fraction": float((density <= 0).double().mean()),
            "dense_fraction": float((density > 0.1).double().mean()),
            "median_log10": float(alive.log10().median()) if alive.numel() else None,
        }
    return data


@sae_app.command("info")
def info(
    path: Annotated[Path, typer.Argument(help="SAE directory (lmscope's or SAELens's format).")],
    json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """An SAE's variant, shape, hook, loss settings and (if saved) training metrics."""
    data = sae_summary(path)
    if json:
        print_json(data)
        return
    cfg = data["config"]
    shape = f"{cfg['d_in']} -> {cfg['d_sae']} latents"
    if cfg["d_out"] is not None:
        shape += f" -> {cfg['d_out']} (transcoder)"
    table = Table(title=f"{path} ({data['format']} format): {data['class']}, {shape}")
    table.add_column("setting")
    table.add_column("value")
    rows = [
        ("hook", cfg["hook_name"]),
        ("writes to", cfg["hook_name_out"]),
        ("model", cfg["model_name"] or cfg["run"]),
        ("k", cfg["k"]),
        ("l1_coefficient", cfg["l1_coefficient"] if cfg["arch"] in ("standard", "gated") else None),
        ("l0_coefficient", cfg["l0_coefficient"] if cfg["arch"] == "jumprelu" else None),
        ("normalisation", _normalisation(cfg)),
        ("decoder rows", "unit norm" if cfg["normalize_decoder"] else "free norm"),
        ("dtype", cfg["dtype"]),
        ("parameters", f"{data['params']:,}"),
    ]
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    for key in _METRICS:
        if key in data.get("metrics", {}):
            value = data["metrics"][key]
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    if "density" in data:
        d = data["density"]
        table.add_row(
            "dead / dense (>10%)", f"{d['dead_fraction']:.1%} / {d['dense_fraction']:.1%}"
        )
        if d["median_log10"] is not None:
            table.add_row("median log10 density", f"{d['median_log10']:.2f}")
    console.print(table)


def _normalisation(cfg: dict[str, Any]) -> str:
    if cfg["normalize_activations"] == "none":
        return "none"
    scale = cfg["activation_scale"]
    return f"inputs x {scale:.4g}" if scale is not None else "inputs expected pre-scaled"


@sae_app.command("convert")
def convert(
    path: Annotated[Path, typer.Argument(help="SAE directory to read (either format).")],
    out: Annotated[Path, typer.Argument(help="Directory to write.")],
    to: Annotated[str, typer.Option("--to", help="Format to write: saelens or lmscope.")],
) -> None:
    """Rewrite an SAE in SAELens's format (cfg.json + sae_weights.safetensors) or lmscope's."""
    from lmscope.sae.interop import convert as convert_sae

    written = convert_sae(path, to, out)
    console.print(f"wrote {written} ({to} format)")
