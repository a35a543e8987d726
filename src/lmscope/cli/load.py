"""``lmscope load``: open a real model (a name, a ``.gguf`` file or a directory) and check it."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import typer

from lmscope.cli import app
from lmscope.cli.common import console, print_json
from lmscope.errors import LmscopeError
from lmscope.real_models import REAL_MODELS, LoadedModel, check_generation, load_with_tokenizer

#: `--dtype` names.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise LmscopeError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """What was loaded: source, config summary, parameter count, dtype, tokenizer."""
    cfg = loaded.model.cfg
    tokenizer = loaded.tokenizer
    tok: dict[str, Any] | None = None
    if tokenizer is not None:
        names = {role: tokenizer.roles.get(role) for role in ("bos", "eos", "pad", "unk")}
        tok = {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": len(tokenizer.special_tokens()),
            "roles": names,
            "chat_template": getattr(tokenizer, "chat_template", None) is not None,
        }
    return {
        "path": str(loaded.path),
        "format": loaded.format,
        "load_seconds": loaded.seconds,
        "config": {
            "name": cfg.name,
            "architecture": cfg.architecture,
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.kv_heads,
            "d_head": cfg.head_dim,
            "d_mlp": cfg.mlp_dim,
            "vocab_size": cfg.vocab_size,
            "max_seq_len": cfg.max_seq_len,
            "positional": cfg.positional,
            "norm": cfg.norm,
            "activation": cfg.activation,
            "tie_embeddings": cfg.tie_embeddings,
        },
        "params": loaded.model.num_params(),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "tokenizer": tok,
    }


@app.command()
def load(
    spec: Annotated[
        str,
        typer.Argument(
            help=f"A named real model ({', '.join(REAL_MODELS)}), a .gguf file or a model "
            "directory."
        ),
    ],
    dtype: Annotated[
        str | None, typer.Option(help=f"Weights dtype: {', '.join(DTYPES)} [default: float32].")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Check prompt: a user message for chat models [default: 'What is the capital "
            "of France?'], else text to continue [default: 'The capital of France is']."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens of the check answer.")] = 8,
    check: Annotated[bool, typer.Option(help="Run the one-line greedy generation check.")] = True,
    json: Annotated[bool, typer.Option("--json", help="Print what was loaded as JSON.")] = False,
) -> None:
    """Load a model with its tokenizer; print its config, tokenizer and a check answer."""
    loaded = load_with_tokenizer(spec, dtype=_dtype(dtype))
    data = describe(loaded)
    causal = loaded.model.cfg.architecture != "encoder" and loaded.model.cfg.is_causal
    if check and causal and loaded.tokenizer is not None:
        data["check"] = check_generation(loaded, prompt, max_new_tokens=max_new_tokens)
    if json:
        print_json(data)
        return
    cfg = data["config"]
    console.print(
        f"[bold]{cfg['name'] or spec}[/] from {data['path']} ({data['format']}), "
        f"loaded in {data['load_seconds']:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    kv = f" / {cfg['n_kv_heads']} kv" if cfg["n_kv_heads"] != cfg["n_heads"] else ""
    console.print(
        f"model: {cfg['architecture']}, {cfg['n_layers']} layers, d_model {cfg['d_model']}, "
        f"{cfg['n_heads']} heads{kv} of {cfg['d_head']}, d_mlp {cfg['d_mlp']}, vocab "
        f"{cfg['vocab_size']}, context {cfg['max_seq_len']}, {cfg['positional']}, "
        f"{cfg['norm']}, {cfg['activation']}, "
        f"{'tied' if cfg['tie_embeddings'] else 'untied'} head; "
        f"{data['params'] / 1e6:.2f}M params in {data['dtype']}",
        highlight=False,
        soft_wrap=True,
    )
    tok = data["tokenizer"]
    if tok is None:
        console.print("tokenizer: none found", highlight=False)
    else:
        roles = ", ".join(f"{role} {name!r}" for role, name in tok["roles"].items() if name)
        console.print(
            f"tokenizer: {tok['kind']}, vocab {tok['vocab_size']}, {tok['special_tokens']} "
            f"special tokens ({roles}); chat template: {'yes' if tok['chat_template'] else 'no'}",
            highlight=False,
            soft_wrap=True,
        )
    if "check" in data:
        c = data["check"]
        console.print(
            f"check ({'chat' if c['chat'] else 'continuation'}, greedy): {c['asked']!r} -> "
            f"{c['answer']!r} ({len(c['new_tokens'])} tokens, {c['seconds']:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )
