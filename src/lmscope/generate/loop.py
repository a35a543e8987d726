"""`generate`: prompts in, new tokens (and text) out, always through the KV cache.

Decoder-only models run one forward over the left-padded prompts (the prefill, which
fills the cache), then one token per step. Encoder-decoder models encode the source
once and decode from a start token the same way; the cross-attention keys and values
are computed at the first decoder step and cached. A sequence that has finished keeps
being fed a pad token (the batch stays rectangular) but its output no longer changes.
Hooks attached to the model fire on every forward, prefill and steps alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.generate.errors import GenerationError
from lmscope.generate.prompts import Prompts, check_ids, left_pad, prompt_rows
from lmscope.generate.sampling import SamplingSettings, next_tokens, seen_mask
from lmscope.generate.steps import StepFn, decoder_steps, seq2seq_steps, sliding_steps
from lmscope.generate.text import TextStream, TextTokenizer
from lmscope.model.base import BaseTransformer
from lmscope.model.layout import use_preferred_layout

FinishReason = Literal["length", "eos", "stop"]
Overflow = Literal["error", "slide"]


@dataclass
class GenerationResult:
    """What `generate` returns: one entry per sequence (prompt-major, then sample).

    `new_tokens` include the EOS token when a sequence ended with one, and the token
    that completed a stop string; `texts` contain neither (the text is cut before the
    stop string). `sequences` are the prompt followed by the new tokens (for an
    encoder-decoder: the decoder start token followed by them).
    """

    new_tokens: list[list[int]]
    sequences: list[list[int]]
    finish_reasons: list[FinishReason]
    texts: list[str] | None = None


@dataclass(frozen=True)
class StreamEvent:
    """One decoding step, as the `stream` callback of `generate` sees it."""

    step: int
    #: The token each sequence chose at this step; None for sequences finished earlier.
    token_ids: list[int | None]
    #: Text each sequence added at this step (with a tokenizer, else None). May be "" while
    #: a character is unfinished or the text could be the start of a stop string.
    texts: list[str] | None = None
    #: Finish reason of each sequence that has finished, at this step or before.
    finished: list[FinishReason | None] = field(default_factory=list)


def generate(
    model: BaseTransformer,
    prompts: Prompts,
    *,
    tokenizer: TextTokenizer | None = None,
    max_new_tokens: int = 64,
    temperature: float | None = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: str | Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    attention_mask: Tensor | None = None,
    stream: Callable[[StreamEvent], None] | None = None,
    overflow: Overflow = "error",
) -> GenerationResult:
    """Continue each prompt by up to `max_new_tokens` tokens.

    `prompts`: a string or list of strings (needs `tokenizer`), a list of token ids, a
    list of token-id lists (any lengths: they are left-padded), or a tensor [batch, pos]
    (left-padded, with `attention_mask`, when rows differ in length). For an
    encoder-decoder model the prompts are the source sequences.

    Sampling: `temperature` 0 or None is greedy; otherwise tokens are drawn after the
    repetition penalty, temperature, `top_k` and `top_p` (nucleus), in that order.
    `seed` makes draws reproducible (None uses torch's global generator).

    A sequence ends at `eos_token_id` (default: the tokenizer's ``eos_id``; ``[]``
    disables it), when its text contains a `stop` string (needs a tokenizer), or after
    `max_new_tokens`. `num_samples` continuations are generated per prompt. `stream` is
    called after every step with a `StreamEvent`. The model runs in eval mode and under
    ``torch.inference_mode`` (its previous mode is restored).

    `overflow` says what happens when prompt + new tokens outgrow the model's context
    (``max_seq_len``): "error" refuses up front; "slide" (decoder-only models) keeps going
    the way nanoGPT samples: prompts are cut to their last ``max_seq_len`` tokens and,
    whenever the context is full, the cache is rebuilt from the last half of it.
    """
    cfg = model.cfg
    if cfg.architecture == "encoder" or not cfg.is_causal:
        kind = "an encoder" if cfg.architecture == "encoder" else "not causal"
        raise GenerationError(
            f"{cfg.name or 'this model'} is {kind}: it sees the whole sequence at once and "
            "cannot generate token by token; use a decoder (GPT, Llama) or an "
            "encoder-decoder (T5) model."
        )
    settings = SamplingSettings(
        temperature=temperature or 0.0,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    stops = _stop_strings(stop, tokenizer)
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    if overflow not in ("error", "slide"):
        raise GenerationError(f"overflow={overflow!r}: choose 'error' or 'slide'.")
    if num_samples < 1:
        raise GenerationError(f"num_samples={num_samples} must be >= 1.")

    rows = prompt_rows(prompts, tokenizer, attention_mask)
    check_ids(rows, cfg.vocab_size)
    rows = [row for row in rows for _ in range(num_samples)]
    eos_ids = _eos_ids(eos_token_id, tokenizer, cfg.vocab_size)
    pad_id = _pad_id(pad_token_id, tokenizer, eos_ids, cfg.vocab_size)
    seq2seq = cfg.architecture == "encoder-decoder"
    start_id = pad_id if decoder_start_token_id is None else decoder_start_token_id
    if seq2seq:
        _check_id("decoder_start_token_id", start_id, cfg.vocab_size)
    slide = overflow == "slide"
    if slide and seq2seq:
        raise GenerationError(
            "overflow='slide' is for decoder-only models; an encoder-decoder's source and "
            "output must each fit its context."
        )
    if not slide:
        _check_lengths(rows, max_new_tokens, cfg.max_seq_len, seq2seq)

    device = model.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    texts = None
    if tokenizer is not None:
        texts = [TextStream(tokenizer, [] if seq2seq else row, stops) for row in rows]

    # Once per model: fp32 weights on CPU re-stored [in, out] for fast few-row products
    # (model/layout.py). Outside inference mode, so the weights stay usable for training.
    use_preferred_layout(model)
    with torch.inference_mode(), _eval_mode(model):
        tokens, mask = left_pad(rows, pad_id, device)
        if seq2seq:
            decoder_start = torch.full((len(rows), 1), start_id, dtype=torch.long, device=device)
            logits, step = seq2seq_steps(model, tokens, mask, decoder_start, max_new_tokens)
            seen = seen_mask(decoder_start, cfg.vocab_size, None)
        elif slide:
            logits, step = sliding_steps(model, rows, pad_id, max_new_tokens)
            tokens, mask = left_pad(rows, pad_id, device)
            valid = mask.bool() if mask is not None else None
        else:
            logits, step = decoder_steps(model, tokens, mask, max_new_tokens)
            valid = mask.bool() if mask is not None else None
            seen = seen_mask(tokens, cfg.vocab_size, valid)
        new, reasons = _sample_loop(
            logits,
            step,
            settings=settings,
            seen=seen if settings.uses_seen else None,
            generator=generator,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            pad_id=pad_id,
            texts=texts,
            stream=stream,
        )
    heads = [[start_id] for _ in rows] if seq2seq else rows
    return GenerationResult(
        new_tokens=new,
        sequences=[head + tail for head, tail in zip(heads, new, strict=True)],
        finish_reasons=reasons,
        texts=[t.text for t in texts] if texts is not None else None,
    )


def _sample_loop(
    logits: Float[Tensor, "batch vocab"],
    step: StepFn,
    *,
    settings: SamplingSettings,
    seen: Tensor | None,
    generator: torch.Generator | None,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    pad_id: int,
    texts: list[TextStream] | None,
    stream: Callable[[StreamEvent], None] | None,
) -> tuple[list[list[int]], list[FinishReason]]:
    """Choose, record and feed back one token per step until every sequence has finished."""
    batch = logits.shape[0]
    new: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[FinishReason | None] = [None] * batch
    done: Tensor | None = None  # rows whose output is frozen (fed pad tokens)
    for i in range(max_new_tokens):
        chosen = next_tokens(logits, settings, seen=seen, generator=generator)
        if done is not None:
            chosen = chosen.masked_fill(done, pad_id)
        ids: list[int] = chosen.tolist()
        active = [r for r in range(batch) if reasons[r] is None]
        for r in active:
            new[r].append(ids[r])
            if ids[r] in eos_ids:
                reasons[r] = "eos"
            elif texts is not None and texts[r].push(ids[r]):
                reasons[r] = "stop"
            elif i == max_new_tokens - 1:
                reasons[r] = "length"
            if reasons[r] is not None and texts is not None:
                texts[r].finish()
        if stream is not None:
            stream(_event(i, ids, active, reasons, texts))
        finished = [r for r in active if reasons[r] is not None]
        if len(finished) == len(active):
            break
        if finished:
            done = (
                torch.zeros(batch, dtype=torch.bool, device=chosen.device) if done is None else done
            )
            done[finished] = True
        if seen is not None:
            seen.scatter_(1, chosen[:, None], True)
        logits = step(chosen)
    return new, [r or "length" for r in reasons]


def _event(
    step: int,
    ids: list[int],
    active: list[int],
    reasons: list[FinishReason | None],
    texts: list[TextStream] | None,
) -> StreamEvent:
    """What the stream callback sees after `step`."""
    live = set(active)
    chosen: list[int | None] = [ids[r] if r in live else None for r in range(len(ids))]
    pieces = None
    if texts is not None:
        pieces = [
            texts[r].take(final=reasons[r] is not None) if r in live else ""
            for r in range(len(ids))
        ]
    return StreamEvent(step, chosen, pieces, list(reasons))


@contextmanager
def _eval_mode(model: BaseTransformer) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; training mode back afterwards if it was on."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _stop_strings(stop: str | Sequence[str] | None, tokenizer: TextTokenizer | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if stops and tokenizer is None:
        raise GenerationError(
            f"stop strings {stops!r} need a tokenizer (they are matched in decoded text); "
            "pass tokenizer=..., or use eos_token_id to stop at a token id."
        )
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError(f"stop strings must be non-empty strings; got {stops!r}.")
    return stops


def _check_id(name: str, value: int, vocab_size: int) -> None:
    if not 0 <= value < vocab_size:
        raise GenerationError(
            f"{name}={value} is outside this model's vocabulary [0, {vocab_size})."
        )


def _eos_ids(
    eos_token_id: int | Sequence[int] | None, tokenizer: TextTokenizer | None, vocab_size: int
) -> frozenset[int]:
    """The token ids that end a sequence (the tokenizer's EOS unless given)."""
    if eos_token_id is None:
        tokenizer_eos = getattr(tokenizer, "eos_id", None)
        eos_token_id = [] if tokenizer_eos is None else [tokenizer_eos]
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    for value in ids:
        _check_id("eos_token_id", value, vocab_size)
    return frozenset(ids)


def _pad_id(
    pad_token_id: int | None,
    tokenizer: TextTokenizer | None,
    eos_ids: frozenset[int],
    vocab_size: int,
) -> int:
    """The id fed as padding: given, else the tokenizer's pad, else an EOS id, else 0.

    Its value never changes a result (padding is masked out and finished rows are
    frozen); it only has to be a valid id.
    """
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_id", None)
    if pad_token_id is None:
        pad_token_id = min(eos_ids) if eos_ids else 0
    _check_id("pad_token_id", pad_token_id, vocab_size)
    return pad_token_id


def _check_lengths(
    rows: Sequence[Sequence[int]], max_new_tokens: int, max_seq_len: int, seq2seq: bool
) -> None:
    """Prompt and generated tokens must fit in the model's context (`max_seq_len`)."""
    longest = max(len(r) for r in rows)
    what = "source" if seq2seq else "prompt"
    if longest > max_seq_len:
        raise GenerationError(
            f"the longest {what} has {longest} tokens, more than this model's context "
            f"(max_seq_len={max_seq_len}); shorten it to at most {max_seq_len} tokens."
        )
    used = 1 if seq2seq else longest  # the decoder starts from one start token
    if used + max_new_tokens > max_seq_len:
        room = max_seq_len - used
        detail = "the decoder start token" if seq2seq else f"the longest prompt ({longest} tokens)"
        raise GenerationError(
            f"max_new_tokens={max_new_tokens} does not fit: {detail} + {max_new_tokens} new "
            f"tokens exceed this model's context (max_seq_len={max_seq_len}); use "
            f"max_new_tokens <= {room}{'' if seq2seq else ' or a shorter prompt'}."
        )
