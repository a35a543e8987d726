"""Prompts in every accepted form -> token-id rows -> one left-padded batch.

Left padding puts every row's last real token in the last column, so one forward pass
gives each row's next-token logits at the same index, and new tokens of all rows land
in the same KV-cache slot. Padding is masked out and does not advance position ids
(the model counts real tokens), so a padded row computes what it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.generate.errors import GenerationError
from lmscope.generate.text import TextTokenizer

#: What `generate` accepts as prompts.
Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray

ACCEPTED = (
    "a string or a list of strings (with a tokenizer), a list of token ids, a list of "
    "token-id lists, or an integer tensor or array [batch, pos]"
)


def prompt_rows(
    prompts: Prompts,
    tokenizer: TextTokenizer | None = None,
    attention_mask: Tensor | None = None,
) -> list[list[int]]:
    """The token ids of each prompt, without padding."""
    if isinstance(prompts, np.ndarray):  # e.g. Tokenizer.encode_array
        prompts = torch.from_numpy(prompts)
    if isinstance(prompts, Tensor):
        return _tensor_rows(prompts, attention_mask)
    if attention_mask is not None:
        raise GenerationError(
            "attention_mask is only for tensor prompts (left-padded [batch, pos]); lists of "
            "token ids may have different lengths and need no mask."
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Sequence) and len(prompts) == 0:
        raise GenerationError(f"no prompts were given; pass {ACCEPTED}.")
    if not isinstance(prompts, Sequence):
        raise GenerationError(f"prompts of type {type(prompts).__name__}: pass {ACCEPTED}.")
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise GenerationError(
                "text prompts need a tokenizer: pass tokenizer=... (for example "
                "lmscope.tokenizers.load_tokenizer(model_dir)), or give token ids instead."
            )
        rows = [list(tokenizer.encode(p)) for p in prompts]  # type: ignore[arg-type]
    elif all(_is_int(t) for t in prompts):
        rows = [[int(t) for t in prompts]]  # type: ignore[union-attr]
    elif all(isinstance(p, Sequence) and not isinstance(p, str) for p in prompts):
        if not all(_is_int(t) for p in prompts for t in p):  # type: ignore[union-attr]
            raise GenerationError(f"token-id lists must hold integers only; pass {ACCEPTED}.")
        rows = [[int(t) for t in p] for p in prompts]  # type: ignore[union-attr]
    else:
        raise GenerationError(f"prompts mix strings, ids and lists; pass {ACCEPTED}.")
    for i, row in enumerate(rows):
        if not row:
            raise GenerationError(
                f"prompt {i} is empty (no tokens); every prompt needs at least one token "
                "(for example the tokenizer's BOS id)."
            )
    return rows


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_rows(tokens: Tensor, attention_mask: Tensor | None) -> list[list[int]]:
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise GenerationError(f"token tensors must hold integer ids, not {tokens.dtype}.")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise GenerationError(
            f"a token tensor prompt must be [batch, pos] with batch >= 1; got shape "
            f"{list(tokens.shape)}."
        )
    if tokens.shape[1] == 0:
        raise GenerationError("the prompt tensor has no positions; give at least one token.")
    if attention_mask is None:
        return tokens.tolist()
    if attention_mask.shape != tokens.shape:
        raise GenerationError(
            f"attention_mask has shape {list(attention_mask.shape)} but the prompts have "
            f"{list(tokens.shape)}; they must match."
        )
    mask = attention_mask.bool()
    # Left padding: within a row, a real token is never followed by padding.
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise GenerationError(
            "prompts must be left-padded (attention_mask 0s before the 1s in every row); "
            "or pass a list of token-id lists of different lengths instead."
        )
    rows = [row[m].tolist() for row, m in zip(tokens, mask, strict=True)]
    for i, row in enumerate(rows):
        if not row:
            raise GenerationError(f"prompt {i} is all padding; every prompt needs a real token.")
    return rows


def check_ids(rows: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)``, naming the prompt."""
    for i, row in enumerate(rows):
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(
                f"prompt {i} has token id {bad[0]}, outside this model's vocabulary "
                f"[0, {vocab_size}); was it tokenized with another model's tokenizer?"
            )


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
    """Rows padded on the left with `pad_id`, and the mask of real tokens (None: no padding)."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    padded = any(len(r) != width for r in rows)
    return tokens.to(device), mask.to(device) if padded else None
