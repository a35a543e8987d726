"""GPT-2's tokenizer, built offline from the ranks file that ships in `openai-whisper`.

A tiktoken ranks file lists every token of GPT-2's byte-level BPE as base64 bytes and
its rank (= its id, 0..50255); ``<|endoftext|>`` is id 50256. Hugging Face `tokenizers`
wants a vocabulary of byte-level strings and an ordered merge list instead. The merges
are recovered the standard way: a token of rank r is the merge of the two parts that
BPE, using only ranks below r, leaves when run on its bytes; merges are ordered by r,
so applying them by priority reproduces tiktoken's lowest-rank-first merging.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
from pathlib import Path

import tokenizers
from tokenizers import models

from lmscope.tokenizers.base import TokenizerError
from lmscope.tokenizers.hf import HFTokenizer, byte_level_tokenizer

END_OF_TEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
_PACKAGE_HINT = "pip install --no-deps openai-whisper (it ships GPT-2's ranks as whisper/assets)"


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the ByteLevel alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    # Bytes that are not printable get code points from 256 up, in byte order.
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def gpt2_ranks_file() -> Path:
    """Path of ``whisper/assets/gpt2.tiktoken`` (without importing whisper)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            f"the GPT-2 tokenizer needs the PyPI package openai-whisper: {_PACKAGE_HINT}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "gpt2.tiktoken"
    if not path.is_file():
        raise TokenizerError(f"openai-whisper is installed but {path} is missing; reinstall it.")
    return path


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file: one ``base64(token bytes) rank`` per line."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise TokenizerError(f"{path}:{number} is not 'base64 rank': {line[:60]!r}") from exc
    return ranks


def _merge_parts(ranks: dict[bytes, int]) -> dict[bytes, tuple[bytes, bytes]]:
    """For each multi-byte token, the two parts rank-ordered BPE below its rank leaves."""
    parts_of = {}
    for token, max_rank in ranks.items():
        if len(token) == 1:
            continue
        # Inlined BPE (one call per token, 50k tokens): lowest-ranked pair first.
        parts = [token[i : i + 1] for i in range(len(token))]
        while True:
            best_rank, best = max_rank, -1
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1], max_rank)
                if rank < best_rank:
                    best_rank, best = rank, i
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise TokenizerError(
                f"rank {max_rank} ({token!r}) is not the merge of two lower ranks."
            )
        parts_of[token] = (parts[0], parts[1])
    return parts_of


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and ordered merges that reproduce tiktoken `ranks`."""
    to_char = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_char[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    parts_of = _merge_parts(ranks)
    ordered = sorted(parts_of, key=ranks.__getitem__)
    return vocab, [(text(parts_of[t][0]), text(parts_of[t][1])) for t in ordered]


@functools.cache
def _gpt2_json() -> str:
    ranks = read_tiktoken(gpt2_ranks_file())
    vocab, merges = vocab_and_merges(ranks)
    tok = byte_level_tokenizer(models.BPE(vocab=vocab, merges=merges))
    # The special token takes the id after the ranks: 50256, as in GPT-2.
    tok.add_special_tokens([tokenizers.AddedToken(END_OF_TEXT, special=True)])
    if tok.token_to_id(END_OF_TEXT) != GPT2_VOCAB_SIZE - 1:
        raise TokenizerError(f"{END_OF_TEXT} did not get id {GPT2_VOCAB_SIZE - 1}.")
    return tok.to_str()


def gpt2_tokenizer() -> HFTokenizer:
    """GPT-2's byte-level BPE (50,257 ids; ``<|endoftext|>`` = 50256), built offline."""
    return HFTokenizer(tokenizers.Tokenizer.from_str(_gpt2_json()), name="gpt2")
