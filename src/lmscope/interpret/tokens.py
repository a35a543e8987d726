"""Token ids for analyses: a prompt as ids, a single target token, ids as readable labels.

Labels make whitespace visible (``" Paris"`` shows as ``"·Paris"``, a newline as
``"⏎"``), because tables and plot axes would otherwise hide the very spaces that make
two tokens different. Models without a tokenizer are labelled by their ids.

A target is a token id or text that must encode to exactly one token (``" Paris"``
with the leading space, as BPE vocabularies store it); text that splits into several
tokens is refused with the pieces named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.errors import LmscopeError

#: A prompt: text (needs a tokenizer), token ids, a 1-D tensor or a ``[1, pos]`` tensor.
Prompt = str | Sequence[int] | Tensor
#: A single token: its id, or text that encodes to exactly one token.
TokenSpec = int | str


def token_label(tokenizer: Any | None, token_id: int) -> str:
    """One token as a short label with visible whitespace (its id without a tokenizer)."""
    if tokenizer is None:
        return str(token_id)
    piece = tokenizer.decode([token_id])
    if piece == "":
        return f"<{token_id}>"
    return piece.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")


def token_labels(tokenizer: Any | None, ids: Sequence[int]) -> list[str]:
    """`token_label` of each id."""
    return [token_label(tokenizer, int(i)) for i in ids]


def as_token_ids(
    tokens: str | Sequence[int] | Tensor, tokenizer: Any | None, vocab_size: int
) -> Int[Tensor, " pos"]:
    """One sequence as a 1-D long tensor: text (encoded by `tokenizer`) or token ids.

    Ids are checked against `vocab_size`; text needs a tokenizer. A ``[1, pos]`` tensor
    is accepted as one sequence.
    """
    if isinstance(tokens, str):
        if tokenizer is None:
            raise LmscopeError("this model has no tokenizer: give token ids instead of text.")
        ids = torch.tensor(tokenizer.encode(tokens), dtype=torch.long)
    else:
        ids = tokens if isinstance(tokens, Tensor) else torch.tensor(list(tokens))
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1 or ids.dtype.is_floating_point:
            raise LmscopeError(
                f"give one sequence of integer token ids, got a {ids.dtype} tensor of shape "
                f"{list(ids.shape)}."
            )
        ids = ids.long()
    if ids.numel() == 0:
        raise LmscopeError("the input is empty: give at least one token.")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise LmscopeError(
            f"token id {int(bad[0])} is outside this model's vocabulary [0, {vocab_size})."
        )
    return ids


def prompt_ids(model: Any, prompt: Prompt, tokenizer: Any | None = None) -> Int[Tensor, "1 pos"]:
    """`prompt` as a checked ``[1, pos]`` id tensor on the model's device (`as_token_ids`)."""
    return as_token_ids(prompt, tokenizer, model.cfg.vocab_size).to(model.device).unsqueeze(0)


def single_token_id(
    token: TokenSpec, tokenizer: Any | None, vocab_size: int, what: str = "target"
) -> int:
    """The id of `token`: an id (checked) or text that encodes to exactly one token."""
    if isinstance(token, bool) or not isinstance(token, int | str):
        raise LmscopeError(f"the {what} must be a token id or text, got {token!r}.")
    if isinstance(token, str):
        if tokenizer is None:
            raise LmscopeError(
                f"the {what} {token!r} is text but this model has no tokenizer to encode "
                "it; give its token id instead."
            )
        ids = tokenizer.encode(token)
        if len(ids) != 1:
            pieces = ", ".join(repr(tokenizer.decode([i])) for i in ids) or "nothing"
            raise LmscopeError(
                f"the {what} {token!r} must be a single token, but it encodes to "
                f"{len(ids)}: {pieces}. Use one of these pieces (mind the leading space)."
            )
        token = int(ids[0])
    if not 0 <= token < vocab_size:
        raise LmscopeError(
            f"the {what} id {token} is outside this model's vocabulary [0, {vocab_size})."
        )
    return token
