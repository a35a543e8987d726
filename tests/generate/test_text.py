"""Incremental decoding and stop strings (`TextStream`), with stand-in tokenizers."""

from __future__ import annotations

from collections.abc import Sequence

from lmscope.generate import TextStream, TextTokenizer
from tests.generate.tokenizers import ByteTokenizer


class SpaceMarkerTokenizer:
    """SentencePiece-like: words carry a leading '_' that becomes a space, except at the
    start of the decoded text (decoders strip it there)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)

    def encode(self, text: str) -> list[int]:
        return [self.words.index("_" + w) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.words[i] for i in ids).replace("_", " ").lstrip(" ")


def stream_all(tokenizer: TextTokenizer, prompt: list[int], new: list[int], stop=()) -> tuple:
    stream = TextStream(tokenizer, prompt, stop)
    pieces = []
    for i, token in enumerate(new):
        stopped = stream.push(token)
        if stopped or i == len(new) - 1:
            stream.finish()
            pieces.append(stream.take(final=True))
            return pieces, stream
        pieces.append(stream.take())
    return pieces, stream


def test_multibyte_characters_are_never_split() -> None:
    tok = ByteTokenizer()
    text = "héllo wörld: 3€ 🙂!"
    pieces, stream = stream_all(tok, tok.encode("say: "), tok.encode(text))
    assert "".join(pieces) == text == stream.text
    assert all("\ufffd" not in p for p in pieces)
    # The 4-byte emoji arrives as one piece, after its last byte.
    assert "🙂" in pieces and pieces.count("") >= 3 + 2 + 1 + 1


def test_unfinished_character_at_the_end_is_flushed_as_replacement() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("ok€")[:-1]  # the euro sign cut after 2 of its 3 bytes
    pieces, stream = stream_all(tok, [], ids)
    assert stream.text == "ok\ufffd" and "".join(pieces) == stream.text


def test_leading_spaces_survive_decoders_that_strip_them() -> None:
    tok = SpaceMarkerTokenizer(["_the", "_cat", "_sat", "_on", "_mat"])
    prompt = tok.encode("the cat")
    pieces, stream = stream_all(tok, prompt, tok.encode("sat on the mat"))
    assert stream.text == " sat on the mat"
    assert pieces == [" sat", " on", " the", " mat"]


def test_stop_string_cuts_text_and_is_never_streamed() -> None:
    tok = ByteTokenizer()
    pieces, stream = stream_all(tok, [], tok.encode("abc\nxyz END tail"), stop=["END", "\n\n"])
    assert stream.stopped and stream.text == "abc\nxyz "
    assert "".join(pieces) == "abc\nxyz "
    # "\n" could have begun "\n\n": it was held back until 'x' ruled that out.
    assert pieces[3] == "" and pieces[4] == "\nx"


def test_stop_string_spanning_many_tokens_and_earliest_match_wins() -> None:
    tok = ByteTokenizer()
    stream = TextStream(tok, [], ["cdef", "ef"])
    for token in tok.encode("abcdefgh"):
        if stream.push(token):
            break
    assert stream.text == "ab"  # "cdef" starts before "ef"
    assert stream.stopped


def test_text_without_stop_strings_is_streamed_immediately() -> None:
    tok = ByteTokenizer()
    pieces, _ = stream_all(tok, [], tok.encode("a\nb"))
    assert pieces == ["a", "\n", "b"]
