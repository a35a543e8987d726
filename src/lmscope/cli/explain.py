"""``lmscope explain``: the worked examples E1 to E7, or one token of a model, in numbers.

With no model option it prints the source documents' worked examples, recomputed by
lmscope's modules. With ``--config``, ``--preset`` or ``--model`` it traces one token of
that model (random weights from ``--seed`` unless loaded from a directory).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import torch
import typer

from lmscope.cli import app
from lmscope.cli.common import console, print_json
from lmscope.config import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.explain import (
    render_examples,
    render_trace,
    trace_token,
    worked_example,
    worked_examples,
)
from lmscope.generate.loading import load_for_generation
from lmscope.generate.text import TextTokenizer
from lmscope.model import build_model
from lmscope.model.base import BaseTransformer

#: Traced when a model is given without --text or --tokens (byte-level vocabularies).
DEFAULT_TEXT = "The cat sat on the mat"


def _model(
    config: Path | None, preset: str | None, model_dir: str | None, seed: int
) -> tuple[BaseTransformer, TextTokenizer | None]:
    """The model the options name (exactly one of them), with its tokenizer if it has one."""
    given = [
        name
        for name, v in (("--config", config), ("--preset", preset), ("--model", model_dir))
        if v is not None
    ]
    if len(given) > 1:
        raise LmscopeError(f"give one model source, not {' and '.join(given)}.")
    if model_dir is not None:
        net, tokenizer, _ = load_for_generation(model_dir, need_tokenizer=False)
        return net, tokenizer
    if config is not None:
        if not config.is_file():
            raise LmscopeError(f"config file {str(config)!r} does not exist.")
        cfg = ModelConfig.from_json(config)
    else:
        assert preset is not None
        cfg = ModelConfig.from_preset(preset)
    return build_model(cfg.replace(dropout=0.0), seed=seed).eval(), None


def _byte_label(b: int) -> str:
    """A byte as a readable label: the character for printable ASCII, else \\xNN."""
    return repr(chr(b)) if 32 <= b < 127 else f"\\x{b:02x}"


def _encode(
    text: str | None, tokens: str | None, vocab_size: int, tokenizer: TextTokenizer | None
) -> tuple[list[int], list[str]]:
    """Token ids and labels from --tokens, or from --text (with the model's tokenizer, or
    as UTF-8 bytes when it has none)."""
    if text is not None and tokens is not None:
        raise LmscopeError("give --text or --tokens, not both.")
    if tokens is not None:
        try:
            ids = [int(t) for t in tokens.replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise LmscopeError(
                f"--tokens must be comma-separated integers (e.g. 1,2,3), got {tokens!r}."
            ) from None
        if not ids:
            raise LmscopeError("--tokens is empty; give at least one token id.")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise LmscopeError(
                f"token id {bad[0]} is outside this model's vocabulary [0, {vocab_size})."
            )
        return ids, [str(i) for i in ids]
    if tokenizer is not None:
        ids = tokenizer.encode(DEFAULT_TEXT if text is None else text)
        if not ids:
            raise LmscopeError("--text is empty; give some text or --tokens.")
        return ids, [repr(tokenizer.decode([i])) for i in ids]
    if vocab_size < 256:
        raise LmscopeError(
            f"{vocab_size} tokens are too few for UTF-8 text (needs 256); use --tokens 1,2,3."
        )
    data = (DEFAULT_TEXT if text is None else text).encode("utf-8")
    if not data:
        raise LmscopeError("--text is empty; give some text or --tokens.")
    return list(data), [_byte_label(b) for b in data]


@app.command()
def explain(
    example: Annotated[
        str | None, typer.Option(help="One worked example (E1..E7); default: all.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Trace a model built from this config JSON.")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Trace a model of this preset.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Trace a saved model: a model or training-run directory, a .gguf file or a "
            "real model's name (smollm2)."
        ),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(help="Text to trace (the model's tokenizer, else UTF-8 bytes)."),
    ] = None,
    tokens: Annotated[str | None, typer.Option(help="Token ids to trace, e.g. 1,2,3.")] = None,
    position: Annotated[
        int | None, typer.Option(help="Token to follow (default -1: the last).")
    ] = None,
    head: Annotated[int | None, typer.Option(help="Attention head to show (default 0).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of a built model's weights.")] = 0,
    top_k: Annotated[int, typer.Option(help="Neurons and predictions to list.")] = 5,
    json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Worked examples E1-E7 step by step, or one token of a model, in real numbers."""
    tracing = config is not None or preset is not None or model is not None
    if not tracing:
        used = [
            name
            for name, v in (
                ("--text", text),
                ("--tokens", tokens),
                ("--position", position),
                ("--head", head),
            )
            if v is not None
        ]
        if used:
            raise LmscopeError(
                f"{used[0]} applies to tracing a model: add --config, --preset or --model."
            )
        examples = worked_examples() if example is None else [worked_example(example)]
        if json:
            print_json({"examples": [dataclasses.asdict(e) for e in examples]})
        else:
            render_examples(examples, console)
        return

    if example is not None:
        raise LmscopeError("--example shows a worked example; it cannot be combined with a model.")
    net, tokenizer = _model(config, preset, model, seed)
    ids, labels = _encode(text, tokens, net.cfg.vocab_size, tokenizer)
    with torch.inference_mode():
        trace = trace_token(
            net,
            ids,
            position=-1 if position is None else position,
            head=head or 0,
            top_k=top_k,
            labels=labels,
        )
    if json:
        print_json(dataclasses.asdict(trace))
    else:
        render_trace(trace, console)
