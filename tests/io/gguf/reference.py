"""What `transformers` computes from the SmolLM2 GGUF: the reference the fast tests compare with.

Loading the GGUF with transformers takes ~40 s here (lmscope: ~8 s), too slow for the
default suite, so its outputs are stored in ``data/smollm2_transformers.json`` and the
fast tests compare lmscope with the file; a slow test (``-m slow``) recomputes them live
and checks the file is still what transformers gives. Regenerate with::

    .venv/bin/python -m tests.io.gguf.reference

Stored: a Shakespeare passage and its token ids; tricky strings and their ids; for 64
positions of the passage, the top-10 logits and the logits of 64 fixed vocabulary ids;
greedy continuations (ids) of a chat question and of a plain prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parent / "data" / "smollm2_transformers.json"
SHARED_TEXT = Path(__file__).resolve().parents[4] / "shared" / "data" / "tinyshakespeare.txt"

#: Strings that stress byte-level BPE: whitespace runs, digits, non-Latin scripts, emoji,
#: special tokens written in the text, invisible characters.
TRICKY = [
    "Hello world",
    "  two leading spaces",
    "trailing   ",
    "tabs\tand\nnewlines\r\n\n\n",
    "numbers 1234567 and 3.14159 and 1,000,000",
    "émoji 🤗🚀 and 日本語のテキスト",
    "Ünïcödé façade naïve",
    "<|im_start|>user\nhi<|im_end|>",
    "it's they're we'll I'd",
    "a\u00a0b\u2009c\u3000d",
    "zero\u200bwidth",
    "   ",
    "mixed<|endoftext|>special",
]
QUESTION = "What is the capital of France?"
CONTINUATION = "The capital of France is"
N_POSITIONS, TOP, N_FIXED = 64, 10, 64
NEW_TOKENS = 8


def passage() -> str:
    """The first 4,000 characters of tiny Shakespeare (stored in the reference file)."""
    return SHARED_TEXT.read_text(encoding="utf-8")[:4000]


def fixed_ids(vocab_size: int) -> list[int]:
    """64 vocabulary ids spread over the whole range (the same in every position)."""
    g = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(vocab_size, generator=g)[:N_FIXED].tolist())


def load_transformers(path: Path) -> tuple[Any, Any]:
    """transformers' model (float32, eval) and tokenizer from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # "dequantizing the whole model" is what we want here
    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


def logit_summary(logits: torch.Tensor, ids: list[int]) -> dict[str, Any]:
    """Top-10 (ids, values) and the values at `ids`, per position: ``[pos, vocab]`` input."""
    top = logits.topk(TOP, dim=-1)
    return {
        "top_ids": top.indices.tolist(),
        "top_values": top.values.tolist(),
        "fixed_values": logits[:, ids].tolist(),
    }


def compute(path: Path, text: str) -> dict[str, Any]:
    """Everything the reference file holds, computed with transformers from `path`."""
    model, tokenizer = load_transformers(path)

    def ids_of(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    passage_ids = ids_of(text)
    fixed = fixed_ids(model.config.vocab_size)
    with torch.inference_mode():
        logits = model(torch.tensor([passage_ids[:N_POSITIONS]])).logits[0]
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
        )
        greedy = {}
        for key, prompt in (("chat", chat), ("continuation", CONTINUATION)):
            prompt_ids = ids_of(prompt)
            out = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False
            )
            greedy[key] = {"prompt_ids": prompt_ids, "new_ids": out[0, len(prompt_ids) :].tolist()}
    return {
        "passage": text,
        "passage_ids": passage_ids,
        "tricky": {s: ids_of(s) for s in TRICKY},
        "fixed_ids": fixed,
        "logits": logit_summary(logits, fixed),
        "greedy": greedy,
    }


def main() -> None:
    """Recompute the reference with transformers and write it."""
    from lmscope.real_models import resolve_real_model

    data = compute(resolve_real_model("smollm2"), passage())
    DATA.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {DATA} ({DATA.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
