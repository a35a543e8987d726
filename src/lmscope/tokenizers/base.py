"""The one small interface every tokenizer has, and loading whatever `save` wrote.

A tokenizer turns text into integer ids and back. `Tokenizer.save(directory)` writes
``lmscope_tokenizer.json`` (which kind it is, its special-token roles, and for the
character tokenizer the vocabulary itself) beside any files the kind needs (a Hugging
Face ``tokenizer.json``), so a model or data directory carries its tokenizer and
`load_tokenizer(directory)` gets it back. A directory holding only a Hugging Face
``tokenizer.json`` (and maybe ``tokenizer_config.json``) loads as is.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from lmscope.errors import LmscopeError

#: The file `Tokenizer.save` always writes: kind, roles and (char) vocabulary.
MANIFEST = "lmscope_tokenizer.json"
#: Hugging Face's serialized tokenizer.
HF_FILE = "tokenizer.json"
#: Hugging Face's side file naming the bos / eos / pad tokens.
HF_CONFIG = "tokenizer_config.json"
FORMAT_VERSION = 1

#: Anything that holds token ids: a list, a 1-D numpy array or a 1-D tensor.
TokenIds = Sequence[int | np.integer] | np.ndarray | Tensor

#: Special-token names that imply a role, when nothing says otherwise. GPT-2's
#: ``<|endoftext|>`` both ends a document and starts the next, as in Hugging Face.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "bos": ("<|endoftext|>", "<s>", "<bos>", "<|bos|>", "<|begin_of_text|>"),
    "eos": ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}
ROLES = tuple(ROLE_NAMES)


class TokenizerError(LmscopeError, ValueError):
    """Text a tokenizer cannot encode, ids it cannot decode, or unreadable tokenizer files."""


def infer_roles(special: Iterable[str]) -> dict[str, str | None]:
    """Which special token plays bos / eos / pad / unk, guessed from the usual names."""
    names = list(special)
    return {
        role: next((n for n in candidates if n in names), None)
        for role, candidates in ROLE_NAMES.items()
    }


def as_id_list(ids: TokenIds) -> list[int]:
    """Token ids as a plain list of Python ints (from a list, an array or a tensor)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise TokenizerError(
                f"decode takes a 1-D sequence of ids, got shape {list(ids.shape)}."
            )
        return [int(i) for i in ids.tolist()]
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise TokenizerError(
                f"decode takes a 1-D sequence of ids, got shape {list(ids.shape)}."
            )
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


class Tokenizer(ABC):
    """Text <-> token ids, with named special tokens; saved beside a model or dataset."""

    #: What `save` records and `load_tokenizer` dispatches on.
    kind: ClassVar[str] = "abstract"

    def __init__(self, roles: Mapping[str, str | None] | None = None) -> None:
        special = self.special_tokens()
        chosen = infer_roles(special) if roles is None else {r: roles.get(r) for r in ROLES}
        for role, token in chosen.items():
            if token is not None and token not in special:
                raise TokenizerError(
                    f"the {role} token {token!r} is not one of this tokenizer's special tokens "
                    f"({', '.join(map(repr, special)) or 'none'})."
                )
        self.roles: dict[str, str | None] = chosen

    # --- what every kind implements -----------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids: every id the tokenizer produces is below it."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""

    @abstractmethod
    def decode(self, ids: TokenIds) -> str:
        """The text of `ids` (special tokens are written out as their names)."""

    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special tokens by name -> id."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of one id (for display; byte-level pieces as stored)."""

    @abstractmethod
    def _save_files(self, directory: Path) -> dict[str, Any]:
        """Write the kind's own files; return the kind's fields for the manifest."""

    # --- shared behaviour -----------------------------------------------------------
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text (kinds backed by Rust encode in parallel)."""
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as a 1-D int64 numpy array (the fast path data preparation uses)."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def _role_id(self, role: str) -> int | None:
        token = self.roles.get(role)
        return None if token is None else self.special_tokens()[token]

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, if there is one."""
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence (end-of-text) token, if there is one."""
        return self._role_id("eos")

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, if there is one."""
        return self._role_id("pad")

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into `directory` (created if missing), file by file atomically."""
        from lmscope.serialization import write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fields = self._save_files(directory)
        manifest = {
            "format": "lmscope-tokenizer",
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "roles": self.roles,
            **fields,
        }
        # The manifest last: a directory with a manifest has all its files.
        write_json(directory / MANIFEST, manifest)

    def describe(self) -> dict[str, Any]:
        """A short summary (kind, vocab size, special tokens) for reports and meta.json."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens(),
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


def _hf_config_roles(path: Path) -> dict[str, str | None] | None:
    """bos / eos / pad / unk from a Hugging Face ``tokenizer_config.json``, if present."""
    if not path.is_file():
        return None
    config = _read_json(path)
    roles: dict[str, str | None] = {}
    for role in ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken written out: {"content": ...}
            value = value.get("content")
        roles[role] = value if isinstance(value, str) else None
    return roles


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer in `path`: a directory `Tokenizer.save` wrote, a directory
    with a Hugging Face ``tokenizer.json``, or a ``tokenizer.json`` file itself."""
    from lmscope.tokenizers.char import CharTokenizer
    from lmscope.tokenizers.hf import HFTokenizer

    path = Path(path)
    if path.is_file():
        if path.name == MANIFEST:
            path = path.parent
        else:
            return HFTokenizer.from_file(path)
    if not path.is_dir():
        raise TokenizerError(f"no tokenizer at {path}: no such file or directory.")
    manifest_path = path / MANIFEST
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        kind = manifest.get("kind")
        version = manifest.get("version")
        if version != FORMAT_VERSION:
            raise TokenizerError(
                f"{manifest_path} has format version {version!r}; this lmscope reads version "
                f"{FORMAT_VERSION}. Re-save the tokenizer with this version."
            )
        if kind == CharTokenizer.kind:
            return CharTokenizer.from_manifest(manifest, manifest_path)
        if kind in HFTokenizer.KINDS:
            return HFTokenizer.from_manifest(manifest, path)
        raise TokenizerError(
            f"{manifest_path} names an unknown tokenizer kind {kind!r}; known: "
            f"{CharTokenizer.kind!r}, {', '.join(map(repr, HFTokenizer.KINDS))}."
        )
    if (path / HF_FILE).is_file():
        tokenizer = HFTokenizer.from_file(path / HF_FILE)
        roles = _hf_config_roles(path / HF_CONFIG)
        if roles is None:
            return tokenizer  # roles inferred from the special tokens' names
        # Configs sometimes name tokens the vocabulary lacks: those roles stay empty.
        known = {r: t for r, t in roles.items() if t and tokenizer.hf.token_to_id(t) is not None}
        return HFTokenizer(tokenizer.hf, roles=known)
    raise TokenizerError(
        f"no tokenizer in {path}: expected {MANIFEST} (written by Tokenizer.save) or a Hugging "
        f"Face {HF_FILE}. Save one there, or point at the directory that has it."
    )
