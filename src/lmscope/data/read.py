"""Reading text files in chunks: decoding, newlines, binary detection, safe cut points.

Files are read as bytes (so they can be hashed and errors can name a byte offset) and
decoded incrementally. Newlines are translated as Python's text mode does (``\\r\\n``
and ``\\r`` become ``\\n``), as nanoGPT's ``open(path).read()`` sees them. The default
``utf-8`` drops a byte-order mark; a file starting with a UTF-16 / UTF-32 mark is
decoded as such.

Chunks end at *safe cut points*: just before a line that starts with a non-space
character and follows a non-blank line. GPT-2's pre-tokenizer regex splits there
whatever comes after, so a byte-level BPE encodes the chunks exactly as the whole file.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from lmscope.errors import LmscopeError

#: Bytes read per block; chunks handed to the tokenizer are about this many characters.
CHUNK_BYTES = 1 << 22
#: A chunk with no safe cut point is cut anyway once it is this many times too long.
_OVERSIZE = 4
_NUL = "\x00"
_NUL_BYTE = b"\x00"


class DataError(LmscopeError, ValueError):
    """Unusable data: a missing or empty file, binary content, a bad JSONL line..."""


class BinaryFileError(DataError):
    """A file with NUL bytes: binary, or text in an encoding other than the one given."""


def check_encoding(encoding: str) -> str:
    """The codec's canonical name, or a clear error for an unknown encoding."""
    try:
        return codecs.lookup(encoding).name
    except LookupError as exc:
        raise DataError(
            f"unknown encoding {encoding!r}; use a Python codec name such as utf-8, "
            "utf-16, latin-1 or cp1252."
        ) from exc


def decoding_codec(encoding: str) -> str:
    """The codec to decode with: utf-8 also accepts (and drops) a byte-order mark."""
    name = check_encoding(encoding)
    return "utf-8-sig" if name == "utf-8" else name


def ascii_compatible(encoding: str) -> bool:
    """Whether ASCII characters (NUL included) are single identical bytes in `encoding`."""
    name = check_encoding(encoding)
    if name == "utf-8-sig":
        name = "utf-8"
    try:
        return "\x00az".encode(name) == b"\x00az"
    except UnicodeError:
        return False


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of a file announces (not UTF-8's)."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _encoding_hint(encoding: str) -> str:
    return (
        f"lmscope reads text files ({encoding} here); if this is text in another encoding, "
        "pass it with --encoding (e.g. latin-1, cp1252, utf-16), otherwise leave the file out"
    )


def decode_error(path: Path, encoding: str, offset: int, byte: int) -> DataError:
    """The error for bytes that do not decode, naming the file and byte offset."""
    return DataError(
        f"{path} is not valid {encoding}: byte 0x{byte:02x} at byte offset {offset} cannot be "
        f"decoded. {_encoding_hint(encoding)}."
    )


def binary_error(path: Path, encoding: str, where: str) -> BinaryFileError:
    """The error for a NUL character: the file is binary, or in another encoding."""
    return BinaryFileError(f"{path} looks binary: NUL byte at {where}. {_encoding_hint(encoding)}.")


def sniff(path: Path, encoding: str, size: int = 1 << 16) -> DataError | None:
    """Why the start of `path` is not text in `encoding` (None when it looks fine)."""
    with open(path, "rb") as f:
        head = f.read(size)
    if ascii_compatible(encoding) and _NUL_BYTE in head:  # before decoding: a PNG is binary
        return binary_error(path, encoding, f"byte offset {head.find(_NUL_BYTE)}")
    decoder = codecs.getincrementaldecoder(decoding_codec(encoding))("strict")
    try:
        text = decoder.decode(head, final=len(head) < size)
    except UnicodeDecodeError as exc:
        return decode_error(path, encoding, exc.start, exc.object[exc.start])
    if _NUL in text:
        where = (
            f"byte offset {head.find(_NUL_BYTE)}"
            if ascii_compatible(encoding)
            else f"character {text.index(_NUL)}"
        )
        return binary_error(path, encoding, where)
    return None


def _last_line_start(text: str, start: int) -> int:
    """Index of the last line in `text[start:]` that starts with a non-space and follows
    a line that ends with one; 0 if none.

    Both conditions matter: a run of whitespace is one pre-token at the end of a text
    but splits before its last character when a non-space follows, so a cut is safe
    only after a lone newline.
    """
    end = len(text) - 1
    while True:
        i = text.rfind("\n", max(start, 1), end)
        if i < 0:
            return 0
        if not text[i + 1].isspace() and not text[i - 1].isspace():
            return i + 1
        end = i


def _last_word_start(text: str, start: int) -> int:
    """Index of the last space between two non-spaces in `text[start:]` (a word start)."""
    end = len(text) - 1
    while True:
        i = text.rfind(" ", start + 1, end)
        if i < 0:
            return 0
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        end = i


def safe_cut(text: str, lo: int = 0) -> int:
    """A cut point in `text` after `lo` where a byte-level BPE's regex splits anyway.

    Prefers the start of a line that begins with a non-space; then a space between two
    words (the space starts the next word's pre-token). 0 if neither exists.
    """
    return _last_line_start(text, lo) or _last_word_start(text, lo)


def split_safely(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of about `size` characters, cut at safe points (see `safe_cut`)."""
    start = 0
    while len(text) - start > size:
        cut = safe_cut(text[start : start + size], size // 2)
        if not cut:  # no safe point in the window: look further before giving up
            cut = safe_cut(text[start : start + _OVERSIZE * size], size // 2) or _OVERSIZE * size
        yield text[start : start + cut]
        start += cut
    if start < len(text) or not text:
        yield text[start:]


def iter_file_text(
    path: Path,
    encoding: str,
    chunk_bytes: int = CHUNK_BYTES,
    on_bytes: Callable[[bytes], None] | None = None,
) -> Iterator[tuple[str, int]]:
    """Decoded text of `path` in chunks cut at safe points, with the bytes each consumed.

    `on_bytes` sees every raw block (for hashing). Raises `DataError` naming the byte
    offset of undecodable bytes or a NUL byte.
    """
    inner = codecs.getincrementaldecoder(decoding_codec(encoding))("strict")
    decoder = io.IncrementalNewlineDecoder(inner, translate=True)
    ascii_ok = ascii_compatible(encoding)
    offset = 0  # bytes read before the current block
    chars = 0  # characters decoded before the current block
    pending = ""
    pending_bytes = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            final = not block
            if on_bytes is not None and block:
                on_bytes(block)
            buffered = len(inner.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                at = offset - buffered + exc.start
                raise decode_error(path, encoding, at, exc.object[exc.start]) from None
            if _NUL in text:
                where = (
                    f"byte offset {offset + block.find(_NUL_BYTE)}"
                    if ascii_ok
                    else f"character {chars + text.index(_NUL)}"
                )
                raise binary_error(path, encoding, where)
            offset += len(block)
            chars += len(text)
            pending += text
            pending_bytes += len(block)
            if final:
                if pending:
                    yield pending, pending_bytes
                return
            if len(pending) >= chunk_bytes:
                cut = safe_cut(pending, len(pending) // 2) or safe_cut(pending)
                if not cut and len(pending) >= _OVERSIZE * chunk_bytes:
                    cut = len(pending)
                if cut:
                    yield pending[:cut], pending_bytes
                    pending, pending_bytes = pending[cut:], 0
