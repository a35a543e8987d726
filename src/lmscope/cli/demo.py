"""``lmscope demo``: build a small model and run it end to end (no data or weights needed).

Until training lands, this is what ``make run`` shows after the worked examples: a
character-level model with nanoGPT's baby-GPT shape, a forward pass, hooks, KV-cache
decoding checked against full forwards, and a save/load round trip.
"""

from __future__ import annotations

import tempfile
import time
from typing import Annotated

import torch
import typer
from rich.table import Table

from lmscope.cli import app
from lmscope.cli.common import console
from lmscope.config import ModelConfig
from lmscope.io import load
from lmscope.model import Transformer, build_model

#: The 65 characters of tiny Shakespeare, in nanoGPT's order (sorted).
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def encode(text: str) -> list[int]:
    """Character ids of `text` (characters outside the 65 are dropped)."""
    return [CHARS.index(c) for c in text if c in CHARS]


def decode(ids: list[int]) -> str:
    """Text of character ids."""
    return "".join(CHARS[i] for i in ids)


@app.command()
def demo(
    preset: Annotated[str, typer.Option(help="Model shape (a preset with vocab_size 65).")] = (
        "shakespeare-char"
    ),
    prompt: Annotated[str, typer.Option(help="Text to feed the model.")] = "ROMEO:\nBut soft",
    new_tokens: Annotated[int, typer.Option(help="Characters to generate.")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed of the initial weights.")] = 0,
) -> None:
    """Build a character-level model, run it, decode with the KV cache, save and reload."""
    cfg = ModelConfig.from_preset(preset, vocab_size=len(CHARS), dropout=0.0)
    model = build_model(cfg, seed=seed).eval()
    assert isinstance(model, Transformer)
    console.rule(f"[bold]{preset}[/]: {model.num_params():,} parameters (random init)")

    tokens = torch.tensor([encode(prompt)])
    patterns: list[torch.Tensor] = []
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, h: patterns.append(x))]
        )
        elapsed = time.perf_counter() - start
    console.print(
        f"forward on {tokens.shape[1]} characters: logits {list(logits.shape)} in "
        f"{elapsed * 1e3:.1f} ms; blocks.0.attn.hook_pattern {list(patterns[0].shape)}"
    )
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(5)
    table = Table(title=f"next character after {prompt[-12:]!r} (untrained: near uniform 1/65)")
    table.add_column("char")
    table.add_column("prob", justify="right")
    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        table.add_row(repr(CHARS[i]), f"{p:.4f}")
    console.print(table)

    # Greedy decoding twice: through the KV cache and with full forwards; they must agree.
    with torch.inference_mode():
        cache = model.make_cache(1, tokens.shape[1] + new_tokens)
        out = model(tokens, kv_cache=cache)
        cached = []
        for _ in range(new_tokens):
            nxt = out[:, -1].argmax(-1, keepdim=True)
            cached.append(int(nxt))
            out = model(nxt, kv_cache=cache)
        seq = tokens
        for _ in range(new_tokens):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    full = seq[0, tokens.shape[1] :].tolist()
    agree = "agree" if cached == full else "[red]DISAGREE[/]"
    console.print(f"greedy continuation (KV cache and full forwards {agree}): {decode(cached)!r}")

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model.save(tmp)
        again = load(tmp)
        same = torch.equal(again(tokens), model(tokens))
    console.print(
        f"save -> load round trip: logits {'bit-identical' if same else '[red]differ[/]'}"
    )
    if cached != full or not same:
        raise typer.Exit(1)
