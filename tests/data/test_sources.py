"""resolve_sources and Source reading: what is found, how it is decoded, and the errors."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from lmscope.data import BinaryFileError, DataError, Source, resolve_sources
from lmscope.data.read import iter_file_text, safe_cut, split_safely


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _text(source: Source, chunk_bytes: int = 1 << 20) -> str:
    return "".join(c.text for c in source.iter_chunks(chunk_bytes))


def test_file_folder_and_glob(tmp_path: Path) -> None:
    a = _write(tmp_path / "corpus" / "a.txt", "alpha\n")
    b = _write(tmp_path / "corpus" / "sub" / "b.md", "beta\n")
    _write(tmp_path / "corpus" / ".git" / "HEAD", "ref: main\n")  # hidden: skipped
    _write(tmp_path / "corpus" / "empty.txt", "")  # empty, in a folder: skipped
    _write(tmp_path / "corpus" / "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # binary
    assert [s.path for s in resolve_sources(a)] == [a]
    assert [s.path for s in resolve_sources(tmp_path / "corpus")] == [a, b]
    assert [s.path for s in resolve_sources(str(tmp_path / "corpus" / "**" / "*.md"))] == [b]
    # A list keeps order and drops duplicates.
    assert [s.path for s in resolve_sources([b, tmp_path / "corpus"])] == [b, a]
    assert all(s.kind == "text" and s.encoding == "utf-8" for s in resolve_sources(a))


def test_missing_path_and_empty_glob(tmp_path: Path) -> None:
    _write(tmp_path / "input.txt", "x")
    with pytest.raises(DataError, match=r"no such file or folder .*input\.tx'.*Did you mean"):
        resolve_sources(tmp_path / "input.tx")
    with pytest.raises(DataError, match="no file matches the glob"):
        resolve_sources(str(tmp_path / "*.csv"))
    with pytest.raises(DataError, match="no data given"):
        resolve_sources([])


def test_empty_file_named_explicitly(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=r"empty\.txt is empty \(0 bytes\)"):
        resolve_sources(empty)
    with pytest.raises(DataError, match=r"no text files in .* all skipped as empty, binary"):
        resolve_sources(tmp_path)


def test_binary_file_names_the_nul_byte_offset(tmp_path: Path) -> None:
    blob = _write(tmp_path / "model.bin", b"GGUF\x03\x00\x00\x00")
    with pytest.raises(
        BinaryFileError, match=r"model\.bin looks binary: NUL byte at byte offset 5"
    ):
        resolve_sources(blob)
    # A NUL far into a file (past the sniffed head) is caught while reading.
    late = _write(tmp_path / "late.txt", b"a" * 100_000 + b"\x00")
    with pytest.raises(BinaryFileError, match=r"byte offset 100000.*--encoding"):
        _text(resolve_sources(late)[0], chunk_bytes=4096)


def test_undecodable_bytes_name_offset_and_suggest_encoding(tmp_path: Path) -> None:
    latin = _write(tmp_path / "latin.txt", "café olé".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8: byte 0xe9 at byte offset 3.*--encoding"):
        resolve_sources(latin)
    (source,) = resolve_sources(latin, encoding="latin-1")
    assert _text(source) == "café olé"
    # Far into the file, with a multi-byte character split across read blocks before it.
    late = _write(tmp_path / "late.txt", "é".encode() * 3000 + b"\xff")
    with pytest.raises(DataError, match="byte 0xff at byte offset 6000"):
        _text(Source(late), chunk_bytes=1001)


def test_unknown_encoding(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "x")
    with pytest.raises(DataError, match="unknown encoding 'utf-9'; use a Python codec name"):
        resolve_sources(a, encoding="utf-9")


def test_byte_order_marks_and_newlines(tmp_path: Path) -> None:
    utf8 = _write(tmp_path / "bom8.txt", codecs.BOM_UTF8 + b"one\r\ntwo\rthree\n")
    utf16 = _write(tmp_path / "bom16.txt", "héllo\r\nwörld".encode("utf-16"))
    (s8,) = resolve_sources(utf8)
    (s16,) = resolve_sources(utf16)
    assert _text(s8) == "one\ntwo\nthree\n"  # BOM dropped, newlines as Python's text mode
    assert s16.encoding == "utf-16"  # detected from its byte-order mark
    assert _text(s16) == "héllo\nwörld"
    # CRLF split across two read blocks is still one newline.
    crlf = _write(tmp_path / "crlf.txt", b"ab\r\ncd")
    assert _text(Source(crlf), chunk_bytes=3) == "ab\ncd"


def test_chunks_cut_only_at_safe_points(tmp_path: Path) -> None:
    text = "".join(f"Line {i}:\n  indented {i}\n\nnext {i}\n" for i in range(300))
    path = _write(tmp_path / "a.txt", text)
    chunks = [c for c, _ in iter_file_text(path, "utf-8", chunk_bytes=256)]
    assert "".join(chunks) == text
    assert len(chunks) > 10
    for chunk in chunks[:-1]:  # each cut: a lone newline, then a non-space
        assert chunk.endswith("\n") and not chunk[-2].isspace()
    assert all(not c[0].isspace() for c in chunks)
    assert safe_cut("ab cd") == 2 and safe_cut("abc") == 0
    assert list(split_safely("", 4)) == [""]


def test_jsonl_field(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "first", "id": 1}),
        "",
        json.dumps({"text": "", "id": 2}),  # empty documents are skipped
        json.dumps({"meta": {"body": "x"}, "text": "second"}),
    ]
    path = _write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    (source,) = resolve_sources(path, field="text")
    assert source.kind == "jsonl"
    chunks = list(source.iter_chunks())
    assert [c.text for c in chunks] == ["first", "second"]
    assert all(c.starts_document for c in chunks)
    assert sum(c.n_bytes for c in chunks) == path.stat().st_size
    nested = _write(tmp_path / "n.jsonl", json.dumps({"meta": {"body": "deep"}}))
    assert [c.text for c in resolve_sources(nested, field="meta.body")[0].iter_chunks()] == ["deep"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": "ok"\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2 is not valid JSON"):
        list(resolve_sources(path, field="text")[0].iter_chunks())
    path = _write(tmp_path / "e.jsonl", '{"text": "ok"}\n\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=r"e\.jsonl, line 3 has no field 'text'; its keys: 'txt'"):
        list(resolve_sources(path, field="text")[0].iter_chunks())
    path = _write(tmp_path / "f.jsonl", '{"text": 3}\n')
    with pytest.raises(DataError, match="line 1: field 'text' is a int, not a string"):
        list(resolve_sources(path, field="text")[0].iter_chunks())
    with pytest.raises(DataError, match=r"is a JSONL file: say which field .* --field"):
        resolve_sources(path)


def test_field_selects_jsonl_files_in_folders(tmp_path: Path) -> None:
    _write(tmp_path / "notes.txt", "plain")
    data = _write(tmp_path / "d.jsonl", '{"text": "hi"}\n')
    assert [s.path for s in resolve_sources(tmp_path, field="text")] == [data]
