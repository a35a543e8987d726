"""From generated token ids to text: incremental decoding, stop strings, what to stream.

Decoding one token at a time is wrong in two ways: a byte-level BPE token can hold half
of a multi-byte character (decoding it alone gives U+FFFD), and SentencePiece-style
decoders drop the leading space of the first token they see. So each sequence keeps a
small window of ids and emits the text that the last token *added* to the window's
decoding, once that text no longer ends in an unfinished character (the method of
Hugging Face's text-generation-inference and vLLM). The window starts with the last few
prompt tokens, which gives the first new token its left context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

#: Prompt tokens the decoding window starts with (left context of the first new token).
CONTEXT_TOKENS = 5
#: What decoders return for the bytes of an unfinished UTF-8 character.
REPLACEMENT = "\ufffd"


@runtime_checkable
class TextTokenizer(Protocol):
    """What generation needs of a tokenizer (`lmscope.tokenizers.Tokenizer` has it).

    Optional attributes read when present: ``eos_id``, ``pad_id``, ``bos_id``.
    """

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        ...


class TextStream:
    """The new text of one sequence, built token by token, cut before any stop string."""

    def __init__(
        self, tokenizer: TextTokenizer, prompt: Sequence[int], stop: Sequence[str] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self.stop), default=0)
        self._ids = list(prompt[-CONTEXT_TOKENS:]) if prompt else []
        self._prefix = 0  # window start
        self._read = len(self._ids)  # ids up to here are already in `text`
        self.text = ""
        self._searched = 0  # characters of `text` already searched for stop strings
        self._emitted = 0  # characters of `text` handed out by `take`
        self.stopped = False

    def push(self, token: int) -> bool:
        """Add one generated token; returns True when the text now contains a stop string."""
        if self.stopped:
            return True
        self._ids.append(token)
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._find_stop()

    def finish(self) -> None:
        """Decode ids still held back (an unfinished character at the very end)."""
        if self.stopped or self._read == len(self._ids):
            return
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        self.text += after[len(before) :]
        self._read = len(self._ids)
        self._find_stop()

    def _find_stop(self) -> bool:
        if not self.stop:
            return False
        # A stop string can straddle the old and the new text: look back far enough.
        start = max(0, self._searched - self._longest_stop + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        self._searched = len(self.text)
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
        return self.stopped

    def take(self, final: bool = False) -> str:
        """Text not handed out yet. Unless `final`, a tail that may be the start of a
        stop string is held back (it must not be shown if the stop string completes)."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= _stop_prefix_length(self.text, self.stop, self._longest_stop)
        end = max(end, self._emitted)
        piece = self.text[self._emitted : end]
        self._emitted = end
        return piece


def _stop_prefix_length(text: str, stop: Sequence[str], longest: int) -> int:
    """Length of the longest tail of `text` that begins some stop string."""
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stop):
            return n
    return 0
