"""Where text comes from: files, folders, globs and JSONL fields, as a list of `Source`s.

`resolve_sources(data)` turns what a user typed (``--data``) into sources, checking
each up front so that a missing, empty, binary or undecodable file is reported before
any work starts. A `Source` streams its text in chunks (`Source.iter_chunks`), so no
file is ever held whole in memory.

Rules: a folder is searched recursively (hidden files and folders skipped) for text
files; inside folders and globs, empty and binary (NUL-containing) files are skipped,
while a file named explicitly must be non-empty text. ``.jsonl`` / ``.ndjson`` files
need `field` (the key holding the text; ``a.b`` reaches into nested objects); with
`field`, folders yield only JSONL files and a file named explicitly is read as JSONL.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmscope.data.read import (
    CHUNK_BYTES,
    BinaryFileError,
    DataError,
    ascii_compatible,
    bom_encoding,
    check_encoding,
    decode_error,
    decoding_codec,
    iter_file_text,
    sniff,
    split_safely,
)
from lmscope.errors import did_you_mean

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Chunk:
    """A piece of a source's text; `starts_document` marks a new document (file, record)."""

    text: str
    starts_document: bool
    #: Bytes of the file consumed since the previous chunk (for progress bars).
    n_bytes: int


@dataclass(frozen=True)
class Source:
    """One file of text: plain text, or the `field` of each line of a JSONL file."""

    path: Path
    field: str | None = None
    encoding: str = "utf-8"

    @property
    def kind(self) -> str:
        """'jsonl' when a field is read from JSON lines, else 'text'."""
        return "text" if self.field is None else "jsonl"

    @property
    def size(self) -> int:
        """Size of the file in bytes."""
        return self.path.stat().st_size

    def iter_chunks(
        self, chunk_bytes: int = CHUNK_BYTES, on_bytes: Callable[[bytes], None] | None = None
    ) -> Iterator[Chunk]:
        """The text in chunks: a text file is one document, a JSONL record is one each."""
        if self.field is None:
            first = True
            for text, n_bytes in iter_file_text(self.path, self.encoding, chunk_bytes, on_bytes):
                yield Chunk(text, first, n_bytes)
                first = False
        else:
            yield from self._jsonl_chunks(on_bytes)

    def iter_text(self) -> Iterator[str]:
        """Just the text, chunk by chunk (for building a tokenizer's vocabulary)."""
        for chunk in self.iter_chunks():
            yield chunk.text

    def describe(self) -> dict[str, Any]:
        """Path, kind, field, encoding and size, for meta.json and reports."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "field": self.field,
            "encoding": self.encoding,
            "bytes": self.size,
        }

    def _jsonl_chunks(self, on_bytes: Callable[[bytes], None] | None) -> Iterator[Chunk]:
        assert self.field is not None
        if not ascii_compatible(self.encoding):
            raise DataError(
                f"{self.path}: JSONL files must be in an ASCII-compatible encoding such as "
                f"utf-8, not {self.encoding}; convert the file or pass --encoding utf-8."
            )
        offset = n_bytes = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if on_bytes is not None:
                    on_bytes(raw)
                n_bytes += len(raw)
                codec = decoding_codec(self.encoding) if number == 1 else self.encoding
                try:
                    line = raw.decode(codec)
                except UnicodeDecodeError as exc:
                    raise decode_error(
                        self.path, self.encoding, offset + exc.start, raw[exc.start]
                    ) from None
                offset += len(raw)
                if not line.strip():
                    continue
                text = self._field_of(line, number)
                if text:
                    yield Chunk(text, True, n_bytes)
                    n_bytes = 0

    def _field_of(self, line: str, number: int) -> str:
        where = f"{self.path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where} is not valid JSON ({exc.msg}, column {exc.colno}); each line of a "
                "JSONL file must be one JSON object."
            ) from None
        field = str(self.field)
        value: Any = record
        if isinstance(record, dict) and field in record:
            value = record[field]
        else:  # a dotted path into nested objects
            for key in field.split("."):
                if not isinstance(value, dict) or key not in value:
                    keys = list(value) if isinstance(value, dict) else []
                    shown = ", ".join(map(repr, keys[:10])) or f"none (a {type(value).__name__})"
                    hint = did_you_mean(key, keys)
                    raise DataError(
                        f"{where} has no field {field!r}; its keys: {shown}. Pass the key that "
                        f"holds the text with --field. {hint}".strip()
                    )
                value = value[key]
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field {field!r} is a {type(value).__name__}, not a string; --field "
                "must name the key that holds the text."
            )
        return value


def _missing(spec: str) -> DataError:
    path = Path(spec)
    siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    hint = did_you_mean(path.name, siblings)
    kind = "file matches the glob" if any(c in spec for c in _GLOB_CHARS) else "such file or folder"
    return DataError(
        f"no {kind} {spec!r}; --data takes a text file, a folder, a glob such as "
        f"'corpus/*.txt', or a JSONL file with --field. {hint}".strip()
    )


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _expand(item: str | Path) -> Iterator[tuple[Path, bool]]:
    """Files named by one --data item, each with whether it was named explicitly."""
    spec = str(item)
    path = Path(spec).expanduser()
    if path.is_file():
        yield path, True
    elif path.is_dir():
        for found in sorted(path.rglob("*")):
            if found.is_file() and not _is_hidden(found, path):
                yield found, False
    elif any(c in spec for c in _GLOB_CHARS):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise _missing(spec)
        for match in map(Path, matches):
            yield from ((p, False) for p, _ in _expand(match))
    else:
        raise _missing(spec)


def _check(path: Path, explicit: bool, field: str | None, encoding: str) -> Source | None:
    """A checked source for `path`, or None when a folder / glob match is skipped."""
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    if field is None and is_jsonl:
        raise DataError(
            f"{path} is a JSONL file: say which field holds the text with --field NAME "
            "(for example --field text)."
        )
    if field is not None and not is_jsonl and not explicit:
        return None  # with a field, folders contribute their JSONL files only
    if path.stat().st_size == 0:
        if explicit:
            raise DataError(f"{path} is empty (0 bytes); give a file with text in it.")
        return None
    if check_encoding(encoding) == "utf-8":
        with open(path, "rb") as f:
            encoding = bom_encoding(f.read(4)) or encoding
    problem = sniff(path, encoding)
    if problem is not None:
        if not explicit and isinstance(problem, BinaryFileError):
            return None  # images, archives... in a folder of text
        raise problem
    return Source(path, field, encoding)


def resolve_sources(
    data: str | Path | Source | Sequence[str | Path | Source],
    field: str | None = None,
    encoding: str = "utf-8",
) -> list[Source]:
    """The sources `data` names: files, folders (recursive), globs, or `Source`s.

    Each is checked up front (exists, not empty, text in `encoding`); see the module
    docstring for what folders and globs skip. Order is kept, duplicates dropped.
    """
    items = [data] if isinstance(data, (str, Path, Source)) else list(data)
    if not items:
        raise DataError("no data given: pass a text file, folder, glob or JSONL file.")
    check_encoding(encoding)
    sources: list[Source] = []
    seen: set[Path] = set()
    for item in items:
        if isinstance(item, Source):
            candidates: list[Source | None] = [item]
        else:
            found = list(_expand(item))
            candidates = [_check(p, explicit, field, encoding) for p, explicit in found]
            if not any(candidates):
                what = "JSONL files (.jsonl, .ndjson)" if field else "text files"
                raise DataError(
                    f"no {what} in {str(item)!r} ({len(found)} files found, all skipped as "
                    "empty, binary or of another kind); point --data at text."
                )
        for source in candidates:
            if source is not None and source.path.resolve() not in seen:
                seen.add(source.path.resolve())
                sources.append(source)
    return sources


def as_sources(items: Iterable[str | Path | Source], encoding: str = "utf-8") -> list[Source]:
    """`Source`s as they are; paths (files, folders, globs) resolved as text."""
    out: list[Source] = []
    for item in items:
        out.extend([item] if isinstance(item, Source) else resolve_sources(item, None, encoding))
    return out


__all__ = [
    "JSONL_SUFFIXES",
    "Chunk",
    "DataError",
    "Source",
    "as_sources",
    "resolve_sources",
    "split_safely",
]
