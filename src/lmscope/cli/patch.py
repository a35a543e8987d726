"""``lmscope patch``: activation (or attribution) patching between a clean and a corrupted prompt.

    lmscope patch smollm2 --clean "The Eiffel Tower is in the city of" \\
        --corrupted "The Colosseum is in the city of" --target " Paris" --baseline " Rome"

The metric is the logit difference ``target - baseline`` at the last position, normalised
so that 0 is the corrupted run and 1 the clean one. By default the corrupted prompt runs
and clean activations are patched in (denoising); each cell says how much of the clean
behaviour that one activation restores. MODEL is anything `open_model` opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution_patching import attribution_patch
from lmscope.interpret.metrics import logit_diff_metric
from lmscope.interpret.patching import activation_patch
from lmscope.interpret.patching_result import PatchingResult
from lmscope.interpret.sites import check_choice
from lmscope.interpret.tokens import single_token_id, token_labels

#: --what -> the activation patched.
WHAT = {
    "resid": "resid_pre",
    "resid_mid": "resid_mid",
    "resid_post": "resid_post",
    "attn": "attn_out",
    "mlp": "mlp_out",
    "heads": "z",
}


def _encode_pair(tokenizer: Any, clean: str, corrupted: str) -> tuple[list[int], list[int]]:
    """Both prompts' ids; a clear error, with the pieces, when their lengths differ."""
    clean_ids, corrupted_ids = tokenizer.encode(clean), tokenizer.encode(corrupted)
    if not clean_ids or not corrupted_ids:
        raise LmscopeError("--clean and --corrupted must both be non-empty prompts.")
    if len(clean_ids) != len(corrupted_ids):
        pieces = [" | ".join(token_labels(tokenizer, ids)) for ids in (clean_ids, corrupted_ids)]
        raise LmscopeError(
            f"the prompts tokenise to different lengths, so their positions do not line up: "
            f"--clean is {len(clean_ids)} tokens ({pieces[0]}), --corrupted is "
            f"{len(corrupted_ids)} ({pieces[1]}). Change the corrupted prompt (e.g. a subject "
            "with as many tokens) until both have the same length."
        )
    return clean_ids, corrupted_ids


def _cell(value: float, result: PatchingResult) -> str:
    """A value coloured by its effect (`PatchingResult.effect`): red where the patch moves
    the metric the clean run's way, blue where it moves it against."""
    effect = value - result.baseline if result.direction == "denoise" else result.baseline - value
    style = (
        "bold red" if effect > 0.5 else "red" if effect > 0.1 else "blue" if effect < -0.1 else ""
    )
    text = f"{value:.2f}"
    return f"[{style}]{text}[/]" if style else text


def _table(result: PatchingResult) -> Table:
    """The grid as a table: layers (or layer x head) as rows, positions or heads as columns."""
    grid, rows, columns, axis = result.matrix()
    table = Table(title=f"{result.method} patching of {result.activation} ({result.direction})")
    table.add_column("layer" if len(rows) == len(result.layers) else "head", justify="right")
    for column in columns:
        table.add_column(
            column if axis == "position" else f"{axis} {column}".strip(),
            justify="right",
            no_wrap=True,
        )
    for row, values in zip(rows, grid.tolist(), strict=True):
        table.add_row(row, *(_cell(v, result) for v in values))
    return table


def _where(cell: dict[str, int | str]) -> str:
    """A cell of `PatchingResult.top` as ``L6 H3 pos 9 ·of``."""
    parts = [f"L{cell['layer']}"]
    if "head" in cell:
        parts.append(f"H{cell['head']}")
    if "position" in cell:
        parts.append(f"pos {cell['position']}" + (f" {cell['token']}" if "token" in cell else ""))
    return " ".join(parts)


@app.command()
def patch(
    model: Annotated[
        str,
        typer.Argument(
            help="Run or model directory, .gguf file, real model name (smollm2) or preset "
            "(random weights)."
        ),
    ],
    clean: Annotated[str, typer.Option(help="The clean prompt.")],
    corrupted: Annotated[str, typer.Option(help="The corrupted prompt (same number of tokens).")],
    target: Annotated[str, typer.Option(help="The clean answer, one token (e.g. ' Paris').")],
    baseline: Annotated[str, typer.Option(help="The corrupted answer, one token (e.g. ' Rome').")],
    what: Annotated[
        str, typer.Option(help="resid, resid_mid, resid_post, attn, mlp or heads.")
    ] = "resid",
    method: Annotated[
        str, typer.Option(help="exact (one pass per cell) or attribution (gradient estimate).")
    ] = "exact",
    direction: Annotated[
        str, typer.Option(help="denoise (run corrupted, patch clean) or noise (the reverse).")
    ] = "denoise",
    by_position: Annotated[
        bool, typer.Option("--by-position", help="heads: one column per head and position.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Patched copies per forward pass.")] = 16,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG heatmap here.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of a preset's random weights.")] = 0,
) -> None:
    """Which layers, positions or heads carry the difference between two prompts."""
    activation = WHAT[check_choice(what, list(WHAT), "--what")]
    check_choice(method, ("exact", "attribution"), "--method")
    net, tokenizer, label = open_model(model, seed=seed)
    if tokenizer is None:
        raise LmscopeError(
            f"{label} has no tokenizer to encode the prompts; use a model that has one "
            "(a run directory with its tokenizer, a .gguf, smollm2, or a GPT-2-vocabulary preset)."
        )
    clean_ids, corrupted_ids = _encode_pair(tokenizer, clean, corrupted)
    vocab = net.cfg.vocab_size
    metric = logit_diff_metric(
        single_token_id(target, tokenizer, vocab, "target"),
        single_token_id(baseline, tokenizer, vocab, "baseline"),
    )
    by = by_position if activation == "z" else None
    options: dict[str, Any] = {"activation": activation, "by_position": by, "direction": direction}
    if method == "exact":
        result = activation_patch(
            net,
            clean_ids,
            corrupted_ids,
            metric,
            tokenizer=tokenizer,
            batch_size=batch_size,
            progress=None if not json else False,
            **options,
        )
    else:
        result = attribution_patch(
            net, clean_ids, corrupted_ids, metric, tokenizer=tokenizer, **options
        )
    if plot is not None:
        # A loaded model's label is its file path: its name is enough for a title.
        name = Path(label).name
        result.plot(plot, title=f"{name}: {result.method} patching of {activation} ({direction})")
    if json:
        print_json(
            {
                "model": label,
                "clean": clean,
                "corrupted": corrupted,
                "target": target,
                "baseline": baseline,
                **result.to_dict(),
            }
        )
        return
    console.print(f"[bold]{label}[/]: logit({target!r}) - logit({baseline!r}) at the last position")
    console.print(
        f"clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f}; cells: "
        "0 = corrupted, 1 = clean"
    )
    console.print(_table(result))
    top = ", ".join(f"{_where(cell)}: {value:.2f}" for cell, value in result.top(5))
    console.print(f"largest effects: {top}")
    if plot is not None:
        console.print(f"wrote {plot}")
