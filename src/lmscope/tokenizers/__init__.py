"""Tokenizers behind one small interface: character-level, byte-level BPE, any tokenizer.json.

- `CharTokenizer`: one id per character (nanoGPT's shakespeare-char ids).
- `HFTokenizer`: a Hugging Face `tokenizers.Tokenizer` (any ``tokenizer.json``);
  `train_bpe` trains a byte-level BPE on your text, `gpt2_tokenizer` builds GPT-2's.
- `load_tokenizer(dir)` reads whatever `Tokenizer.save(dir)` wrote (or a plain
  Hugging Face ``tokenizer.json``); `make_tokenizer` turns a CLI-style name into one;
  `train_tokenizer` is ``lmscope tokenizer train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.tokenizers.base import (
    MANIFEST,
    TokenIds,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)
from lmscope.tokenizers.char import CharTokenizer
from lmscope.tokenizers.gpt2 import gpt2_tokenizer
from lmscope.tokenizers.hf import HFTokenizer, train_bpe

if TYPE_CHECKING:
    from lmscope.data.sources import Source

#: The names `make_tokenizer` (and ``--tokenizer``) take besides a directory.
TOKENIZER_KINDS = ("char", "bpe", "gpt2")


def make_tokenizer(
    tokenizer: str | Path, sources: Sequence[str | Path | Source], vocab_size: int = 4096
) -> Tokenizer:
    """The tokenizer `tokenizer` names: 'char' or 'bpe' (built from `sources`: `Source`s,
    or paths of files, folders, globs), 'gpt2', or a directory / ``tokenizer.json``."""
    if tokenizer in ("char", "bpe"):
        from lmscope.data.sources import as_sources

        resolved = as_sources(sources)
        if tokenizer == "char":
            return CharTokenizer.from_files(resolved)
        return train_bpe(resolved, vocab_size)
    if tokenizer == "gpt2":
        return gpt2_tokenizer()
    path = Path(tokenizer)
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {str(tokenizer)!r} is not one of {', '.join(TOKENIZER_KINDS)} nor an "
            "existing tokenizer directory or tokenizer.json file."
        )
    return load_tokenizer(path)


def train_tokenizer(
    out: str | Path,
    data: str | Path | Sequence[str | Path] | None = None,
    field: str | None = None,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    encoding: str = "utf-8",
) -> HFTokenizer:
    """``lmscope tokenizer train``: a byte-level BPE trained on `data` (default:
    Shakespeare), saved to `out`."""
    from lmscope.data import default_corpus, resolve_sources

    sources = resolve_sources(
        default_corpus() if data is None else data, field=field, encoding=encoding
    )
    tokenizer = train_bpe(sources, vocab_size, min_frequency=min_frequency)
    tokenizer.save(out)
    return tokenizer


__all__ = [
    "MANIFEST",
    "TOKENIZER_KINDS",
    "CharTokenizer",
    "HFTokenizer",
    "TokenIds",
    "Tokenizer",
    "TokenizerError",
    "gpt2_tokenizer",
    "load_tokenizer",
    "make_tokenizer",
    "train_bpe",
    "train_tokenizer",
]
