"""``lmscope lens show|train`` and ``lmscope attribute``: what each layer would predict,
and which components write a logit.

- ``lens show MODEL --text ...``: the logit lens (or a tuned lens with ``--tuned DIR``)
  as tables: the top-1 token per layer and position, then the top-k, the target's
  probability and rank and the KL to the output at one position.
- ``lens train MODEL --data ... --out DIR``: train a tuned lens on the model's own
  activations over a text file or prepared token data, and report its KL per layer
  against the logit lens on held-out text.
- ``attribute MODEL --text ... --target ...``: direct logit attribution, ranked.

MODEL is anything `open_model` opens: a run or model directory, a ``.gguf``, a real
model's name (``smollm2``) or a preset with random weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console, open_model, print_json
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution import AttributionResult, direct_logit_attribution
from lmscope.interpret.logit_lens import LensResult, logit_lens
from lmscope.interpret.tuned_lens import TunedLens, lens_divergence, train_tuned_lens, tuned_lens

lens_app = typer.Typer(
    help="The logit lens and the tuned lens: what the model would predict after each layer.",
    no_args_is_help=True,
)
app.add_typer(lens_app, name="lens")

Model = Annotated[
    str,
    typer.Argument(
        help="Run or model directory, .gguf file, real model name (smollm2) or preset "
        "(random weights)."
    ),
]
Text = Annotated[str | None, typer.Option(help="The prompt, encoded by the model's tokenizer.")]
Tokens = Annotated[str | None, typer.Option(help="The prompt as token ids, e.g. 5,17,42.")]
Seed = Annotated[int, typer.Option(help="Seed of a preset's random weights.")]
Plot = Annotated[Path | None, typer.Option(help="Write a PNG picture here.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _prompt(text: str | None, tokens: str | None) -> str | list[int]:
    """The prompt from --text or --tokens (exactly one)."""
    if (text is None) == (tokens is None):
        raise LmscopeError("give the prompt as --text or as --tokens (one of them).")
    if text is not None:
        return text
    assert tokens is not None
    try:
        return [int(t) for t in tokens.replace(",", " ").split()]
    except ValueError:
        raise LmscopeError(f"--tokens {tokens!r}: give integer token ids, e.g. 5,17,42.") from None


def _token(text: str | None, token_id: int | None, option: str) -> int | str | None:
    """A single token from --X (text) or --X-id (an id); not both."""
    if text is not None and token_id is not None:
        raise LmscopeError(f"give --{option} or --{option}-id, not both.")
    return token_id if token_id is not None else text


def _layers(spec: str | None) -> str | list[int]:
    if spec is None:
        return "all"
    try:
        return [int(x) for x in spec.replace(",", " ").split()]
    except ValueError:
        raise LmscopeError(f"--layers {spec!r}: give layer numbers, e.g. 0,6,12.") from None


# --- lens show ---------------------------------------------------------------------------
def _grid(result: LensResult, positions: int) -> Table:
    """Top-1 token (probability) per row and position, for the last `positions` positions."""
    shown = range(max(0, len(result.input_ids) - positions), len(result.input_ids))
    table = Table(title=f"{result.method}: top-1 token per layer (rows) and input position")
    table.add_column("layer", no_wrap=True)
    for p in shown:
        table.add_column(f"{p}: {result.input_tokens[p]}", overflow="fold")
    # The output at the top, embeddings at the bottom: the stream flows upward.
    for r in reversed(range(len(result.labels))):
        cells = [
            f"{result.top_tokens[r][p][0]} {float(result.top_probs[r, p, 0]):.2f}" for p in shown
        ]
        table.add_row(result.labels[r], *cells)
    return table


def _detail(result: LensResult, position: int) -> Table:
    """Top-k, target probability and rank, and KL to the output, per row at `position`."""
    p = position % len(result.input_ids)
    title = f"{result.method} at position {p} ({result.input_tokens[p]!r})"
    table = Table(title=title)
    table.add_column("layer", no_wrap=True)
    table.add_column("top tokens (probability)", overflow="fold")
    if result.target_probs is not None:
        table.add_column(f"P({result.target_token})", justify="right")
        table.add_column("rank", justify="right")
    table.add_column("KL to output", justify="right")
    for r, label in enumerate(result.labels):
        tops = ", ".join(
            f"{tok} {float(q):.3f}"
            for tok, q in zip(result.top_tokens[r][p], result.top_probs[r, p], strict=True)
        )
        row = [label, tops]
        if result.target_probs is not None and result.target_ranks is not None:
            row += [f"{float(result.target_probs[r, p]):.4f}", str(int(result.target_ranks[r, p]))]
        table.add_row(*row, f"{float(result.kl_to_final[r, p]):.3f}")
    return table


@lens_app.command("show")
def show(
    model: Model,
    text: Text = None,
    tokens: Tokens = None,
    target: Annotated[
        str | None, typer.Option(help="Target token as text (one token, e.g. ' Paris').")
    ] = None,
    target_id: Annotated[int | None, typer.Option(help="Target token as an id.")] = None,
    top_k: Annotated[int, typer.Option(help="Top tokens per layer.")] = 5,
    tuned: Annotated[
        Path | None, typer.Option(help="A tuned lens directory (lmscope lens train).")
    ] = None,
    norm: Annotated[
        str, typer.Option(help="recompute: each stream renormalised; frozen: the output's scale.")
    ] = "recompute",
    include_mid: Annotated[
        bool, typer.Option("--include-mid", help="Also the streams between attention and MLP.")
    ] = False,
    layers: Annotated[
        str | None, typer.Option(help="Rows to show, e.g. 0,6,12 (0 = embeddings).")
    ] = None,
    position: Annotated[int, typer.Option(help="Position of the detailed table.")] = -1,
    positions: Annotated[int, typer.Option(help="Positions in the top-1 grid (the last N).")] = 8,
    plot: Plot = None,
    json: Json = False,
    seed: Seed = 0,
) -> None:
    """The logit lens (or a tuned lens) on a prompt: the model's guess after each layer."""
    net, tokenizer, label = open_model(model, seed=seed)
    prompt = _prompt(text, tokens)
    goal = _token(target, target_id, "target")
    options: dict[str, Any] = dict(
        target=goal, top_k=top_k, layers=_layers(layers), norm=norm, tokenizer=tokenizer
    )
    if tuned is not None:
        if include_mid:
            raise LmscopeError("--include-mid is for the logit lens: a tuned lens has no mid rows.")
        result = tuned_lens(net, TunedLens.load(tuned), prompt, **options)
    else:
        result = logit_lens(net, prompt, include_mid=include_mid, **options)
    if not -len(result.input_ids) <= position < len(result.input_ids):
        raise LmscopeError(
            f"--position {position} does not exist: the prompt has 0..{len(result.input_ids) - 1}."
        )
    if plot is not None:
        result.plot(plot)
    if json:
        print_json({"model": label, **result.to_dict()})
        return
    console.print(f"[bold]{label}[/]")
    console.print(_grid(result, positions))
    console.print(_detail(result, position))
    if result.target_id is not None:
        first = result.first_top1(position)
        where = f"top-1 from row {first}" if first else "never top-1"
        console.print(f"target {result.target_token!r}: {where} at position {position}.")
    if plot is not None:
        console.print(f"plot: {plot}")


# --- lens train --------------------------------------------------------------------------
def _token_stream(data: Path, tokenizer: Any, vocab_size: int) -> tuple[Any, Any]:
    """Training and held-out tokens: a prepared data directory's train / val splits, or a
    text file encoded by the model's tokenizer and split 90 / 10."""
    import numpy as np

    from lmscope.data import TokenData

    if data.is_dir():
        prepared = TokenData(data)
        if prepared.vocab_size > vocab_size:
            raise LmscopeError(
                f"{data} was prepared with a vocabulary of {prepared.vocab_size:,} tokens; the "
                f"model has {vocab_size:,}."
            )
        train_ids = prepared.split("train")
        sample = [int(i) for i in train_ids[:256]]
        # Same ids, same text, or the data was tokenized differently from the model.
        if tokenizer is not None and tokenizer.decode(sample) != prepared.tokenizer.decode(sample):
            raise LmscopeError(
                f"{data} was prepared with another tokenizer than the model's: its token ids "
                "mean different text. Prepare it with the model's tokenizer (lmscope data "
                "prepare --tokenizer MODEL_DIR), or give a text file."
            )
        return train_ids, prepared.split("val")
    if not data.is_file():
        raise LmscopeError(f"--data {str(data)!r} is neither a text file nor prepared token data.")
    if tokenizer is None:
        raise LmscopeError(
            "this model has no tokenizer to encode a text file: give prepared token data "
            "(lmscope data prepare) as --data."
        )
    ids = np.asarray(tokenizer.encode(data.read_text(encoding="utf-8")), dtype=np.int64)
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


@lens_app.command("train")
def train(
    model: Model,
    data: Annotated[
        Path, typer.Option(help="A text file (model's tokenizer) or prepared token data.")
    ],
    out: Annotated[Path, typer.Option(help="Directory to write the tuned lens into.")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 250,
    lr: Annotated[float, typer.Option(help="Learning rate (SGD, Nesterov momentum 0.9).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    eval_batches: Annotated[int, typer.Option(help="Held-out batches for the report.")] = 4,
    json: Json = False,
    seed: Seed = 0,
) -> None:
    """Train a tuned lens (Belrose et al. 2023) on a model's activations; report KL per layer."""
    from lmscope.data import get_batch, iter_eval_batches

    net, tokenizer, label = open_model(model, seed=seed)
    train_ids, val_ids = _token_stream(data, tokenizer, net.cfg.vocab_size)
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            yield get_batch(train_ids, batch_size, seq_len, generator)[0]

    lens = train_tuned_lens(net, batches(), steps=steps, lr=lr, seed=seed, progress=not json)
    lens.info.update(model=label, data=str(data), seq_len=seq_len)
    lens.save(out)
    held_out = [x for x, _ in iter_eval_batches(val_ids, batch_size, seq_len, eval_batches)]
    logit_kl = lens_divergence(net, held_out)
    tuned_kl = lens_divergence(net, held_out, lens)
    if json:
        print_json(
            {
                "model": label,
                "out": str(out),
                "steps": steps,
                "final_loss": lens.info["losses"][-1],
                "held_out_kl": {"logit_lens": logit_kl.tolist(), "tuned_lens": tuned_kl.tolist()},
            }
        )
        return
    table = Table(title=f"held-out KL(output || lens), nats: {label}")
    table.add_column("layer")
    table.add_column("logit lens", justify="right")
    table.add_column("tuned lens", justify="right")
    for layer, (a, b) in enumerate(zip(logit_kl.tolist(), tuned_kl.tolist(), strict=True)):
        name = "final_post" if layer == net.cfg.n_layers else f"{layer}_pre"
        table.add_row(name, f"{a:.4f}", f"{b:.4f}")
    console.print(table)
    console.print(f"tuned lens written to {out}")


# --- attribute ---------------------------------------------------------------------------
def _attribution_table(result: AttributionResult, top: int) -> Table:
    what = repr(result.target_token)
    if result.baseline_id is not None:
        what += f" - {result.baseline_token!r}"
    table = Table(
        title=f"direct logit attribution of {what} at position {result.position} "
        f"({result.input_tokens[result.position]!r})"
    )
    table.add_column("rank", justify="right")
    table.add_column("component")
    table.add_column("kind")
    table.add_column("attribution", justify="right")
    kinds = dict(zip(result.labels, result.kinds, strict=True))
    for rank, (name, value) in enumerate(result.top(top, by="abs"), start=1):
        table.add_row(str(rank), name, kinds[name], f"{value:+.4f}")
    return table


@app.command("attribute")
def attribute(
    model: Model,
    text: Text = None,
    tokens: Tokens = None,
    target: Annotated[str | None, typer.Option(help="Target token as text (one token).")] = None,
    target_id: Annotated[int | None, typer.Option(help="Target token as an id.")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Attribute the logit difference target - baseline.")
    ] = None,
    baseline_id: Annotated[int | None, typer.Option(help="Baseline token as an id.")] = None,
    position: Annotated[int, typer.Option(help="Position whose logit to explain.")] = -1,
    by: Annotated[str, typer.Option(help="components, heads or neurons.")] = "components",
    layer: Annotated[
        int | None, typer.Option(help="With --by neurons: the MLP layer (default: all).")
    ] = None,
    top: Annotated[int, typer.Option(help="Components to list (largest |attribution|).")] = 20,
    plot: Plot = None,
    json: Json = False,
    seed: Seed = 0,
) -> None:
    """Direct logit attribution: each head / MLP / neuron's direct write to a logit."""
    net, tokenizer, label = open_model(model, seed=seed)
    goal = _token(target, target_id, "target")
    if goal is None:
        raise LmscopeError("give the token to explain as --target (text) or --target-id.")
    result = direct_logit_attribution(
        net,
        _prompt(text, tokens),
        target=goal,
        baseline=_token(baseline, baseline_id, "baseline"),
        position=position,
        granularity=by,  # type: ignore[arg-type]  # checked by the library
        layer=layer,
        tokenizer=tokenizer,
    )
    if plot is not None:
        result.plot(plot, top=top)
    if json:
        print_json({"model": label, **result.to_dict()})
        return
    console.print(f"[bold]{label}[/]")
    console.print(_attribution_table(result, top))
    console.print(
        f"sum of all {len(result.labels)} attributions {result.total:+.4f} = the model's "
        f"logit{' difference' if result.baseline_id is not None else ''} {result.logit:+.4f}"
    )
    if plot is not None:
        console.print(f"plot: {plot}")
