"""Tokenizers backed by Hugging Face `tokenizers`: any ``tokenizer.json``, and BPE training.

`train_bpe` trains a byte-level BPE (GPT-2's scheme: the ByteLevel pre-tokenizer maps
every byte to a printable character and splits with GPT-2's regex; the ByteLevel
decoder maps back), so every string encodes without unknown tokens and
``decode(encode(s)) == s`` for any unicode text. No normalizer is applied, which keeps
that round trip exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmscope.tokenizers.base import HF_FILE, TokenIds, Tokenizer, TokenizerError, as_id_list

if TYPE_CHECKING:
    from lmscope.data.sources import Source


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind lmscope's interface.

    `encode` adds no special tokens (no post-processor template): callers that want
    a bos token put `bos_id` in front themselves.
    """

    kind: ClassVar[str] = "hf"
    #: The kinds this class stands for: trained here (bpe), GPT-2's (gpt2), or loaded.
    KINDS: ClassVar[tuple[str, ...]] = ("hf", "bpe", "gpt2")

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        name: str = "hf",
        roles: Mapping[str, str | None] | None = None,
    ) -> None:
        if name not in self.KINDS:
            raise TokenizerError(f"HFTokenizer name must be one of {self.KINDS}, got {name!r}.")
        # A tokenizer.json may carry padding / truncation settings (sentence-transformers
        # ships MiniLM's padded to 128): `encode` must return the text's ids only. Callers
        # that batch pad themselves, with masks.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.hf = tokenizer
        self.kind = name  # type: ignore[misc]  # per instance: what made this tokenizer
        self._special = {
            added.content: token_id
            for token_id, added in sorted(tokenizer.get_added_tokens_decoder().items())
            if added.special
        }
        # A role token (from tokenizer_config.json) may be a plain vocabulary entry.
        for token in (roles or {}).values():
            if token is not None and token not in self._special:
                token_id = tokenizer.token_to_id(token)
                if token_id is not None:
                    self._special[token] = token_id
        ids = tokenizer.get_vocab(with_added_tokens=True).values()
        self._vocab_size = max(ids, default=-1) + 1
        # GPT-2's pre-tokenizer regex always splits between a lone newline and a
        # non-space, so a byte-level tokenizer (and only that kind) encodes text cut
        # there exactly as the whole: long text can then be encoded in parallel.
        pre = tokenizer.pre_tokenizer
        self._splittable = (
            isinstance(pre, pre_tokenizers.ByteLevel)
            and not pre.add_prefix_space
            and pre.use_regex
            and tokenizer.normalizer is None
        )
        super().__init__(roles)

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_file(
        cls, path: str | Path, *, roles: Mapping[str, str | None] | None = None, name: str = "hf"
    ) -> HFTokenizer:
        """Load a Hugging Face ``tokenizer.json`` as is."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path}.")
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(
                f"cannot read {path} as a Hugging Face tokenizer.json: {exc}"
            ) from exc
        return cls(hf, roles=roles, name=name)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], directory: Path) -> HFTokenizer:
        """Load what `save` wrote: ``tokenizer.json`` plus the manifest's kind and roles."""
        file = directory / str(manifest.get("file", HF_FILE))
        return cls.from_file(file, roles=manifest.get("roles"), name=str(manifest["kind"]))

    # --- the interface --------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added tokens included)."""
        return self._vocab_size

    def special_tokens(self) -> dict[str, int]:
        """The added tokens marked special, by name -> id."""
        return dict(self._special)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of one id (byte-level BPE pieces show spaces as 'Ġ')."""
        token = self.hf.id_to_token(token_id)
        if token is None:
            raise TokenizerError(
                f"token id {token_id} is not in this tokenizer's vocabulary of {self.vocab_size}."
            )
        return token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens written in the text are recognised)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in parallel in Rust."""
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as int64 (byte-level BPE: cut at line starts, encoded in parallel)."""
        from lmscope.data.sources import split_safely

        pieces = list(split_safely(text, 16_384)) if self._splittable else [text]
        if len(pieces) == 1:
            return np.asarray(self.encode(text), dtype=np.int64)
        encoded = self.encode_batch(pieces)
        return np.concatenate([np.asarray(ids, dtype=np.int64) for ids in encoded])

    def decode(self, ids: TokenIds) -> str:
        """The text of `ids`, special tokens included."""
        id_list = as_id_list(ids)
        bad = [i for i in id_list if not 0 <= i < self._vocab_size]
        if bad:
            raise TokenizerError(
                f"token id {bad[0]} is out of range for a vocabulary of {self._vocab_size} ids."
            )
        return self.hf.decode(id_list, skip_special_tokens=False)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        from lmscope.serialization import atomic_write

        atomic_write(directory / HF_FILE, lambda tmp: self.hf.save(str(tmp), pretty=True))
        return {"file": HF_FILE}


def byte_level_tokenizer(model: models.Model) -> tokenizers.Tokenizer:
    """A tokenizer with GPT-2's byte-level pre-tokenizer and decoder around `model`."""
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _texts(items: Iterable[str | Path | Source], encoding: str) -> Iterator[str]:
    from lmscope.data.sources import as_sources

    for item in items:
        if isinstance(item, str):
            yield item
        else:
            for source in as_sources([item], encoding=encoding):
                yield from source.iter_text()


def train_bpe(
    files_or_texts: Iterable[str | Path | Source],
    vocab_size: int,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    min_frequency: int = 2,
    encoding: str = "utf-8",
) -> HFTokenizer:
    """Train a byte-level BPE tokenizer with Hugging Face `tokenizers`.

    `files_or_texts`: `Path`s of text files and `lmscope.data.Source`s are read in
    chunks; plain `str` items are training text themselves. The vocabulary holds the
    256 byte symbols, the special tokens (ids 0..n-1) and learned merges up to
    `vocab_size` (fewer if the text has fewer pairs seen `min_frequency` times).
    """
    from lmscope.data.sources import DataError

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    least = len(alphabet) + len(special_tokens)
    if vocab_size < least:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least "
            f"{least} ({len(alphabet)} byte symbols + {len(special_tokens)} special tokens)."
        )
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be at least 1, got {min_frequency}.")
    tok = byte_level_tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    seen_text = False

    def counted() -> Iterator[str]:
        nonlocal seen_text
        for text in _texts(files_or_texts, encoding):
            seen_text = seen_text or bool(text)
            yield text

    tok.train_from_iterator(counted(), trainer=trainer)
    if not seen_text:
        raise DataError("train_bpe got no text: the files or texts given are all empty.")
    return HFTokenizer(tok, name="bpe")
