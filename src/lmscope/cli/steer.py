"""``lmscope steer``: build a steering vector, generate under several coefficients, measure it.

Wraps `lmscope.interpret.steering` (`steering_vector`, `generate_steered`) and
`lmscope.interpret.steering_effect.steering_effect`. Without ``--positive`` and
``--negative`` the built-in contrastive pairs (``STEERING_PAIRS``: "Love"/"Hate" and
similar) give a difference-of-means vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json
from lmscope.errors import LmscopeError
from lmscope.interpret.datasets import STEERING_PAIRS
from lmscope.interpret.steering import generate_steered, steering_vector
from lmscope.interpret.steering_effect import SteeringEffect, steering_effect

DEFAULT_COEFFICIENTS = (0.0, 4.0, 8.0)


def _words(text: str | None) -> list[str] | None:
    """Comma-separated words, kept as written (a leading space is part of a BPE token)."""
    if text is None:
        return None
    words = [w for w in text.split(",") if w.strip()]
    if not words:
        raise LmscopeError(f"{text!r} holds no words; separate words with commas.")
    return words


def _effect_table(effect: SteeringEffect) -> Table:
    rows = effect.rows()
    targets = ", ".join(t.label for t in effect.targets)
    table = Table(title=f"log-probability of the next token: {targets}")
    table.add_column("coef", justify="right")
    table.add_column("mean log p", justify="right")
    table.add_column("Δ vs 0", justify="right")
    for target in effect.targets:
        table.add_column(f"Δ {target.label}", justify="right")
    if effect.baselines:
        table.add_column("Δ baseline", justify="right")
        table.add_column("Δ target - baseline", justify="right")
    if effect.continuation_logprob is not None:
        table.add_column("Δ over continuation", justify="right")
    for row in rows:
        cells = [f"{row['coefficient']:g}", f"{row['target_logprob']:.3f}", f"{row['delta']:+.3f}"]
        cells += [f"{d:+.3f}" for d in row["per_target_delta"].values()]
        if effect.baselines:
            cells += [f"{row['baseline_delta']:+.3f}", f"{row['delta_vs_baseline']:+.3f}"]
        if effect.continuation_logprob is not None:
            cells.append(f"{row['continuation_delta']:+.3f}")
        table.add_row(*cells)
    return table


@app.command()
def steer(
    model: Annotated[
        str, typer.Argument(help="Run or model directory, .gguf, real model, or preset.")
    ],
    layer: Annotated[
        int, typer.Option(help="Block whose activation is steered (negative counts back).")
    ],
    prompt: Annotated[str, typer.Option(help="Text to continue under each coefficient.")],
    positive: Annotated[
        list[str] | None,
        typer.Option(help="Positive prompt (repeatable) [default: built-in pairs]."),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option(help="Negative prompt (repeatable) [default: built-in pairs]."),
    ] = None,
    coef: Annotated[
        list[float] | None,
        typer.Option(help="Steering coefficient (repeatable) [default: 0, 4, 8]."),
    ] = None,
    hook: Annotated[
        str, typer.Option(help="resid_pre, resid_mid, resid_post, attn_out or mlp_out.")
    ] = "resid_pre",
    position: Annotated[
        str, typer.Option(help="Each prompt's activation: 'last' token or 'mean'.")
    ] = "last",
    bos: Annotated[
        bool,
        typer.Option(
            "--bos/--no-bos",
            help="Put the tokenizer's BOS token before each contrastive prompt (never read: "
            "the first position is often an attention sink).",
        ),
    ] = True,
    positions: Annotated[
        str, typer.Option(help="Steer 'all' positions (prompt too) or only 'new' tokens.")
    ] = "all",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per coefficient.")] = 30,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.0,
    seed: Annotated[
        int, typer.Option(help="Seed of sampling (and of a preset's random weights).")
    ] = 0,
    targets: Annotated[
        str | None, typer.Option(help="Target words, comma-separated, e.g. ' love, wonderful'.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline words to compare with, e.g. ' hate, awful'.")
    ] = None,
    continuation_tokens: Annotated[
        int, typer.Option(help="Also average target log-probs over a continuation this long.")
    ] = 0,
    save: Annotated[
        Path | None, typer.Option(help="Save the steering vector in this directory.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of the effect against the coefficient.")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Steer a model along a contrastive direction (activation addition) and measure the effect."""
    if (positive is None) != (negative is None):
        raise LmscopeError("give both --positive and --negative, or neither (built-in pairs).")
    if positions not in ("all", "new"):
        raise LmscopeError(f"--positions {positions!r} is invalid: use 'all' or 'new'.")
    if position not in ("last", "mean"):
        raise LmscopeError(f"--position {position!r} is invalid: use 'last' or 'mean'.")
    if plot is not None and targets is None:
        raise LmscopeError("--plot draws the effect on --targets; give --targets too.")
    net, tokenizer, label = open_model(model, seed=seed)
    if tokenizer is None:
        raise LmscopeError(f"{label} has no tokenizer; steering from text prompts needs one.")
    pos = positive or [p for p, _ in STEERING_PAIRS]
    neg = negative or [n for _, n in STEERING_PAIRS]
    coefficients = coef or list(DEFAULT_COEFFICIENTS)
    bos_id = getattr(tokenizer, "bos_id", None)
    prefix = [bos_id] if bos and bos_id is not None else None
    vector = steering_vector(
        net,
        tokenizer,
        pos,
        neg,
        layer=layer,
        hook=hook,
        position=position,
        prefix=prefix,  # type: ignore[arg-type]
    )
    effect = None
    target_words = _words(targets)
    if target_words is not None:
        effect = steering_effect(
            net,
            tokenizer,
            prompt,
            vector,
            coefficients,
            target_words,
            baseline_words=_words(baseline),
            positions=positions,  # type: ignore[arg-type]
            continuation_tokens=continuation_tokens,
            temperature=temperature,
            seed=seed,
        )
    # After the effect, which checks the target words: a typo fails before generating.
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    texts = generate_steered(
        net, tokenizer, prompt, vector, coefficients, positions=positions, **gen
    )
    if save is not None:
        vector.save(save)
    if plot is not None and effect is not None:
        effect.plot(plot, title=f"{label}: steering at {vector.hook}")
    if json:
        print_json(
            {
                "model": label,
                "hook": vector.hook,
                "layer": vector.layer,
                "norm": vector.norm,
                "positive": pos,
                "negative": neg,
                "prefix": prefix,
                "prompt": prompt,
                "generations": {str(c): t[0] for c, t in texts.items()},
                "effect": effect.to_dict() if effect is not None else None,
            }
        )
        return
    console.print(
        f"[bold]{label}[/]: vector at {vector.hook} (norm {vector.norm:.3f}) from "
        f"{len(pos)} positive / {len(neg)} negative prompts"
        f"{' after BOS' if prefix else ''}; steering {positions} positions",
        highlight=False,
    )
    for c, generated in texts.items():
        console.print(f"[bold]coef {c:g}[/]: {prompt}[cyan]{generated[0]}[/]", highlight=False)
    if effect is not None:
        console.print(_effect_table(effect))
    else:
        console.print("[dim]give --targets to measure the change in log-probability.[/]")
    if plot is not None:
        console.print(f"plot: {plot}")
    if save is not None:
        console.print(f"vector saved in {save}")
