"""``lmscope train``: train a model (a recipe, preset or config) and sample from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console
from lmscope.presets import PRESETS
from lmscope.train import TrainConfig, TrainResult, train
from lmscope.train.config import load_run_spec
from lmscope.train.recipes import RECIPES, recipe, recipe_reference


@app.command("train")
def train_command(
    model: Annotated[
        str,
        typer.Argument(help="A recipe, a model preset, or a model / run config JSON."),
    ] = "shakespeare",
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a model or training setting: key=value."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an existing run in --out (a finished one is kept).")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show the live progress bar.")] = True,
    sample: Annotated[bool, typer.Option(help="Print a generated sample at the end.")] = True,
) -> None:
    """Train on Shakespeare by default; resumable, checkpointed, logged and plotted."""
    train_settings: dict = {}
    model_spec: dict | str = model
    if model in RECIPES:
        model_spec, train_settings = recipe(model)
    elif model not in PRESETS and Path(model).is_file():
        spec_model, spec_train = load_run_spec(model) if _is_run_spec(model) else (None, {})
        if spec_model is not None:
            model_spec, train_settings = spec_model, spec_train
    run_dir = out or Path("runs") / model.replace("/", "_").removesuffix(".json")
    config = TrainConfig.from_dict(train_settings) if train_settings else None
    result = train(
        model_spec,
        config,
        out=run_dir,
        overrides=set_ or [],
        resume=resume,
        show_progress=progress,
        console=console,
    )
    if result.model_dir is None:
        return  # not the main process
    _summary(result, recipe_reference(model) if not set_ else None)
    n_sample = _sample_tokens(result.run_dir)
    if sample and n_sample > 0:
        _print_sample(result.model_dir, n_sample)
    console.print("\nNext:", style="bold")
    console.print(f"  lmscope generate {result.model_dir} --prompt 'ROMEO:'")
    console.print(f"  lmscope explain --model {result.model_dir} --text 'To be'")
    console.print(f"  lmscope info {result.model_dir}")


def _sample_tokens(run_dir: Path) -> int:
    """The run's ``sample_tokens`` setting (from its saved run.json)."""
    import json

    from lmscope.train.setup import RUN_FILE

    settings = json.loads((run_dir / RUN_FILE).read_text()).get("train", {})
    return int(settings.get("sample_tokens", 200))


def _is_run_spec(path: str) -> bool:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "train" in data


def _summary(r: TrainResult, reference: str | None) -> None:
    table = Table(title=f"run {r.run_dir}", show_header=False)
    rows = [
        ("steps", f"{r.steps:,}"),
        ("tokens", f"{r.tokens:,}"),
        ("training time", f"{r.elapsed_s / 60:.1f} min"),
        ("ran on", f"{r.device}, {r.precision}" + (", compiled" if r.compiled else "")),
        ("last train loss", _fmt(r.train_loss)),
        ("last val loss", _fmt(r.val_loss)),
        ("best val loss", _fmt(r.best_val_loss)),
        ("model", str(r.model_dir)),
        ("curves", str(r.run_dir / "loss.png")),
    ]
    if reference is not None:
        rows.append(("this recipe's reference", reference))
    if r.interrupted:
        rows.append(("status", "interrupted: run the same command again to resume"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_sample(model_dir: Path, n_tokens: int) -> None:
    """A short sample from the trained model (decoders only)."""
    import torch

    from lmscope.io import load
    from lmscope.tokenizers import load_tokenizer

    model = load(model_dir)
    if model.cfg.architecture != "decoder":
        return
    tokenizer = load_tokenizer(model_dir)
    with torch.inference_mode():
        result = model.generate(
            "\n",
            tokenizer=tokenizer,
            max_new_tokens=n_tokens,
            temperature=0.8,
            top_k=50,
            seed=0,
            overflow="slide",  # samples longer than the context, as nanoGPT's
        )
    console.rule("sample (temperature 0.8, top-k 50)")
    console.print(result.texts[0], highlight=False, markup=False)
    console.rule()
