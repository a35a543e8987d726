"""Character-level tokenizer, as nanoGPT's shakespeare-char.

The vocabulary is the sorted set of characters of the training text, so on tiny
Shakespeare its 65 ids are exactly nanoGPT's (``stoi = {ch: i for i, ch in
enumerate(sorted(set(data)))}``). Special tokens, if any, take the ids after the
characters; they are never parsed out of text, only produced by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lmscope.tokenizers.base import TokenIds, Tokenizer, TokenizerError, as_id_list

if TYPE_CHECKING:
    from lmscope.data.sources import Source


def _describe_char(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer(Tokenizer):
    """One id per character: the sorted unique characters, then any special tokens."""

    kind: ClassVar[str] = "char"

    def __init__(
        self,
        chars: Iterable[str],
        special_tokens: Sequence[str] = (),
        unk_token: str | None = None,
        roles: Mapping[str, str | None] | None = None,
    ) -> None:
        chars = list(chars)
        for ch in chars:
            if len(ch) != 1:
                raise TokenizerError(
                    f"CharTokenizer vocabulary entries must be single characters, got {ch!r}."
                )
        if len(set(chars)) != len(chars):
            raise TokenizerError("CharTokenizer characters must be unique.")
        if not chars:
            raise TokenizerError("CharTokenizer needs at least one character (the text was empty).")
        special = list(special_tokens)
        if unk_token is not None and unk_token not in special:
            special.append(unk_token)
        clash = [s for s in special if s in chars or special.count(s) > 1]
        if clash:
            raise TokenizerError(
                f"special tokens must be distinct and not plain characters of the vocabulary: "
                f"{clash[0]!r}."
            )
        self.chars: list[str] = sorted(chars)
        self.unk_token = unk_token
        self._itos = self.chars + special
        self._special = {s: len(self.chars) + i for i, s in enumerate(special)}
        # Code points, sorted like the characters: encode is a vectorised searchsorted.
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        super().__init__(roles)
        if unk_token is not None:  # an explicit unk_token always plays that role
            self.roles["unk"] = unk_token

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_text(
        cls, text: str, special_tokens: Sequence[str] = (), unk_token: str | None = None
    ) -> CharTokenizer:
        """The tokenizer of `text`'s characters (nanoGPT's ``sorted(set(text))``)."""
        return cls(set(text), special_tokens=special_tokens, unk_token=unk_token)

    @classmethod
    def from_files(
        cls,
        files: Iterable[str | Path | Source],
        special_tokens: Sequence[str] = (),
        unk_token: str | None = None,
        encoding: str = "utf-8",
    ) -> CharTokenizer:
        """The tokenizer of the characters in text files, JSONL fields or `Source`s.

        Files are read in chunks (never whole), with the same decoding and newline
        handling as `lmscope.data.prepare`.
        """
        from lmscope.data.sources import as_sources

        seen: set[str] = set()
        for source in as_sources(files, encoding=encoding):
            for text in source.iter_text():
                seen.update(text)
        return cls(seen, special_tokens=special_tokens, unk_token=unk_token)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: Path) -> CharTokenizer:
        """Rebuild from the fields `save` wrote into ``lmscope_tokenizer.json``."""
        try:
            chars = list(manifest["chars"])
            special = list(manifest.get("special_tokens", []))
            unk = manifest.get("unk_token")
            roles = manifest.get("roles")
        except (KeyError, TypeError) as exc:
            raise TokenizerError(f"{where} is not a valid char tokenizer manifest: {exc}") from exc
        return cls(chars, special_tokens=special, unk_token=unk, roles=roles)

    # --- the interface --------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Characters plus special tokens."""
        return len(self._itos)

    def special_tokens(self) -> dict[str, int]:
        """Special tokens by name -> id (they follow the characters)."""
        return dict(self._special)

    def id_to_token(self, token_id: int) -> str:
        """The character (or special token name) of one id."""
        return self.decode([token_id])

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text`'s characters as int64; unknown characters raise (or map to unk)."""
        # UTF-32 gives one code point per character; surrogatepass keeps lone surrogates.
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codepoints, points).astype(np.int64, copy=False)
        found = self._codepoints[np.minimum(ids, len(self._codepoints) - 1)] == points
        if not found.all():
            if self.unk_token is None:
                pos = int(np.argmin(found))
                raise TokenizerError(
                    f"character {_describe_char(text[pos])} at position {pos} is not in this "
                    f"tokenizer's vocabulary of {len(self.chars)} characters; build the "
                    "tokenizer from text that contains it, or give it an unk_token."
                )
            ids[~found] = self._special[self.unk_token]
        return ids

    def encode(self, text: str) -> list[int]:
        """One id per character of `text`."""
        return self.encode_array(text).tolist()

    def decode(self, ids: TokenIds) -> str:
        """The characters of `ids` (special tokens written as their names)."""
        out = []
        for i in as_id_list(ids):
            if not 0 <= i < len(self._itos):
                raise TokenizerError(
                    f"token id {i} is out of range for a vocabulary of {len(self._itos)} ids."
                )
            out.append(self._itos[i])
        return "".join(out)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        return {
            "chars": self.chars,
            "special_tokens": list(self._special),
            "unk_token": self.unk_token,
        }
