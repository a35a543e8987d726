"""Generation: sample continuations from a model, through its KV cache.

`generate(model, prompts, ...)` (also ``model.generate(prompts, ...)``) handles greedy
decoding and sampling (temperature, top-k, top-p, repetition penalty), EOS and stop
strings, batched prompts of different lengths, streaming, and encoder-decoder models.

Modules: `loop` (the decoding loop and `GenerationResult`), `sampling` (logits
processors), `prompts` (prompt forms, left padding), `text` (incremental decoding and
stop strings), `chat` (conversations -> prompts), `loading` (a model directory or
training run -> model and tokenizer).
"""

from __future__ import annotations

from lmscope.generate.chat import ChatFormat, chat_format
from lmscope.generate.errors import GenerationError
from lmscope.generate.loading import find_model_dir, load_for_generation
from lmscope.generate.loop import FinishReason, GenerationResult, StreamEvent, generate
from lmscope.generate.sampling import (
    SamplingSettings,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    next_tokens,
    seen_mask,
)
from lmscope.generate.text import TextStream, TextTokenizer

__all__ = [
    "ChatFormat",
    "FinishReason",
    "GenerationError",
    "GenerationResult",
    "SamplingSettings",
    "StreamEvent",
    "TextStream",
    "TextTokenizer",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "chat_format",
    "find_model_dir",
    "generate",
    "load_for_generation",
    "next_tokens",
    "seen_mask",
]
