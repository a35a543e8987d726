"""The model side of decoding: prefill the KV cache, then a step function per new token.

Each builder returns the logits of the first new token and a `StepFn` that feeds back
the tokens just chosen and returns the next logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from lmscope.generate.prompts import left_pad
from lmscope.model.base import BaseTransformer

#: Logits of the next token given the token each row just chose.
StepFn = Callable[[Int[Tensor, " batch"]], Float[Tensor, "batch vocab"]]


def decoder_steps(
    model: BaseTransformer,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None,
    max_new_tokens: int,
) -> tuple[Float[Tensor, "batch vocab"], StepFn]:
    """Prefill the cache with the prompts; the logits of their next token, and the step."""
    cache = model.make_cache(tokens.shape[0], tokens.shape[1] + max_new_tokens)
    first = model(tokens, attention_mask=mask, kv_cache=cache)[:, -1]

    def step(chosen: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
        # No mask: the cache remembers the prompts' padding, and new tokens are all real.
        return model(chosen[:, None], kv_cache=cache)[:, -1]

    return first, step


def sliding_steps(
    model: BaseTransformer,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    max_new_tokens: int,
) -> tuple[Float[Tensor, "batch vocab"], StepFn]:
    """Like `decoder_steps`, but the context slides instead of overflowing.

    The model only ever sees the last ``max_seq_len`` tokens of each row. When the cache
    is full it is rebuilt by a fresh prefill of each row's last ``max_seq_len // 2``
    tokens, so positions restart from 0 (as nanoGPT's sampler crops its input); half a
    context of slack keeps these rebuilds rare. The rows of a batch share the cache, so
    they slide together, when the longest fills the context: a shorter row's
    continuation then differs from what it would be alone.
    """
    context = model.cfg.max_seq_len
    keep = max(1, context // 2)
    history = [list(row[-context:]) for row in rows]
    device = model.device
    state: dict[str, Any] = {}

    def prefill(window: list[list[int]]) -> Float[Tensor, "batch vocab"]:
        tokens, mask = left_pad(window, pad_id, device)
        room = min(context, tokens.shape[1] + max_new_tokens)
        state["cache"] = model.make_cache(tokens.shape[0], room)
        state["used"], state["room"] = tokens.shape[1], room
        return model(tokens, attention_mask=mask, kv_cache=state["cache"])[:, -1]

    def step(chosen: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
        for row, token in zip(history, chosen.tolist(), strict=True):
            row.append(token)
        if state["used"] >= state["room"]:
            return prefill([row[-keep:] for row in history])
        state["used"] += 1
        return model(chosen[:, None], kv_cache=state["cache"])[:, -1]

    return prefill(history), step


def seq2seq_steps(
    model: BaseTransformer,
    source: Int[Tensor, "batch src"],
    mask: Int[Tensor, "batch src"] | None,
    decoder_start: Int[Tensor, "batch 1"],
    max_new_tokens: int,
) -> tuple[Float[Tensor, "batch vocab"], StepFn]:
    """Encode once; the first decoder logits (after the start token), and the step."""
    encoder_out = model.encode(source, attention_mask=mask)
    cache = model.make_cache(source.shape[0], max_new_tokens + 1)

    def step(chosen: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
        return model.decode(chosen[:, None], encoder_out, attention_mask=mask, kv_cache=cache)[
            :, -1
        ]

    first = model.decode(decoder_start, encoder_out, attention_mask=mask, kv_cache=cache)[:, -1]
    return first, step
